"""Shared tiny random-weight diffusers UnCLIP pipelines, saved with diffusers' own ``save_pretrained``."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.utils import logging as diffusers_logging  # noqa: E402

from unclip.interop.random_pipeline import (  # noqa: E402
    RandomUnCLIPSpec,
    build_random_diffusers_unclip,
    save_diffusers_unclip,
)

diffusers_logging.set_verbosity_error()  # the deprecation notice on every UnCLIP pipeline instantiation


@pytest.fixture(scope="session")
def t2i_dir(tmp_path_factory):
    """A tiny diffusers UnCLIPPipeline directory (random weights)."""
    directory = tmp_path_factory.mktemp("diffusers_t2i")
    save_diffusers_unclip(build_random_diffusers_unclip(RandomUnCLIPSpec(seed=0)), directory)
    return directory


@pytest.fixture(scope="session")
def variation_dir(tmp_path_factory):
    """A tiny diffusers UnCLIPImageVariationPipeline directory (random weights)."""
    directory = tmp_path_factory.mktemp("diffusers_variation")
    save_diffusers_unclip(build_random_diffusers_unclip(RandomUnCLIPSpec(seed=3), variation=True), directory)
    return directory


@pytest.fixture(scope="session")
def ref_t2i(t2i_dir):
    """diffusers' own UnCLIPPipeline loaded back from the saved directory."""
    pipe = diffusers.UnCLIPPipeline.from_pretrained(str(t2i_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def ours_t2i(t2i_dir):
    from unclip import UnCLIPPipeline

    return UnCLIPPipeline.from_pretrained(t2i_dir)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
