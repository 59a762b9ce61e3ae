"""The console script pauses the garbage collector for an image command's start-up and resumes it once the
pipeline is loaded (unclip.cli.startup)."""

import gc

import pytest

from unclip.cli import startup


@pytest.fixture
def restore_gc():
    was_enabled = gc.isenabled()
    yield
    startup._paused = False
    gc.unfreeze()
    (gc.enable if was_enabled else gc.disable)()


def test_pause_then_resume_freezes_and_reenables(restore_gc):
    gc.enable()
    gc.unfreeze()
    startup.pause_gc()
    assert not gc.isenabled()
    keep = [[] for _ in range(10)]  # objects alive at the resume go to the permanent generation
    startup.resume_gc()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(keep)
    startup.resume_gc()  # a second resume changes nothing
    assert gc.isenabled()


def test_resume_without_pause_leaves_a_disabled_collector_alone(restore_gc):
    gc.disable()
    startup.pause_gc()  # already off: not ours to turn back on
    startup.resume_gc()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0
