"""Shared fixtures of the prior-task tests: a tiny CLIP and a 64-row shapes cache it embedded (16 held out)."""

import pytest

from unclip.data.embed_cache import EmbeddingCache, null_text_for_cache
from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import build_shapes_cache
from unclip.pipeline.builder import tiny_clip

PRIOR_CACHE_ROWS = 64


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, clip):
    directory = tmp_path_factory.mktemp("prior_cache")
    build_shapes_cache(directory, clip, PRIOR_CACHE_ROWS, ShapesWorld(seed=0), 16, progress=False)
    return directory


@pytest.fixture(scope="module")
def cache(cache_dir):
    return EmbeddingCache.load(cache_dir)


@pytest.fixture(scope="module")
def null_text(cache, clip):
    return null_text_for_cache(cache, clip)
