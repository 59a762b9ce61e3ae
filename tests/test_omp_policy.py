"""The CLI's OpenMP wait policy: spin briefly only on an idle machine, never override the user's choice."""

import os
import subprocess
import sys

import pytest

from unclip.omp_policy import SPIN_COUNT, choose_wait_policy, machine_idle

IDLE = ["0.05 0.10 0.20 1/210 12345\n"] * 5
BUSY = ["0.10 0.10 0.20 3/210 12345\n"] * 5  # two other runnable tasks
AFTER_A_RUN = ["1.90 1.00 0.50 1/210 12345\n"] * 5  # a loaded last minute, but nothing else runnable now
ONCE_BUSY = IDLE[:4] + ["0.10 0.10 0.20 2/210 12345\n"]


def test_machine_idle_reads_the_runnable_tasks_of_every_sample():
    assert machine_idle(IDLE)
    assert machine_idle(AFTER_A_RUN)  # one command after another keeps spinning
    assert not machine_idle(BUSY)
    assert not machine_idle(ONCE_BUSY)
    with pytest.raises(ValueError, match="loadavg"):
        machine_idle(["garbage"])
    with pytest.raises(ValueError, match="samples"):
        machine_idle([])


@pytest.mark.parametrize(
    ("environ", "loadavg", "expected"),
    [
        ({}, IDLE, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({}, BUSY, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ({}, ONCE_BUSY, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ({}, None, {"OMP_WAIT_POLICY": "PASSIVE"}),  # no /proc/loadavg: the safe choice
        ({}, ["garbage"], {"OMP_WAIT_POLICY": "PASSIVE"}),
        ({"UNCLIP_OMP_SPIN": "on"}, BUSY, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({"UNCLIP_OMP_SPIN": "OFF"}, IDLE, {"OMP_WAIT_POLICY": "PASSIVE"}),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, IDLE, {}),  # the user's (and CI's) setting is kept
        ({"GOMP_SPINCOUNT": "0", "UNCLIP_OMP_SPIN": "on"}, IDLE, {}),
    ],
)
def test_choose_wait_policy(environ, loadavg, expected):
    assert choose_wait_policy(environ, loadavg) == expected


def test_bad_mode_names_the_value():
    with pytest.raises(ValueError, match="'sometimes'"):
        choose_wait_policy({"UNCLIP_OMP_SPIN": "sometimes"}, IDLE)


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra)
    return env


def test_cli_entry_sets_the_policy_before_torch():
    code = "import sys, os, unclip.cli.main; print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=_cli_env(UNCLIP_OMP_SPIN="on"), capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    assert out == ["False", str(SPIN_COUNT)]


def test_cli_rejects_a_bad_mode_in_one_line():
    result = subprocess.run([sys.executable, "-m", "unclip.cli.main", "--help"], env=_cli_env(UNCLIP_OMP_SPIN="x"),
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "Error: UNCLIP_OMP_SPIN must be one of auto, on, off, got 'x'"
