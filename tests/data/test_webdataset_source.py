"""Webdataset shards: grouping by key, bad samples, shard specs, and the stream over ranks/workers with resume."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unclip.data.transforms import CaptionedSample, ImageTransform, SkippedSample
from unclip.data.webdataset_source import (
    StreamPosition,
    WebDatasetSource,
    WebDatasetStream,
    expand_braces,
    expand_shards,
    split_key,
    write_webdataset,
)


def _samples(n, seed=0, size=12):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8), f"caption {i}", {"i": i}) for i in range(n)]


@pytest.fixture()
def shards(tmp_path):
    """4 shards of 5 samples (png, lossless); sample 3 has no caption, sample 7 a corrupt image."""
    samples = _samples(20)
    samples[3] = (samples[3][0], None, {"i": 3})
    samples[7] = (b"\x89PNG broken", "broken image", {"i": 7})
    paths = write_webdataset(tmp_path / "wds", samples, per_shard=5, image_format="png")
    return tmp_path / "wds", paths, samples


def test_split_key_and_braces():
    assert split_key("00000/000000012.jpg") == ("00000/000000012", "jpg")
    assert split_key("a.b.seg.png") == ("a", "b.seg.png")
    assert expand_braces("s{08..10}.tar") == ["s08.tar", "s09.tar", "s10.tar"]
    assert expand_braces("{a,b}{0..1}") == ["a0", "a1", "b0", "b1"]
    with pytest.raises(ValueError, match="empty"):
        expand_braces("{3..1}")


def test_shard_specs(shards, tmp_path):
    directory, paths, _ = shards
    names = [str(p) for p in paths]
    assert expand_shards(directory) == names
    assert expand_shards(str(directory / "{00000..00003}.tar")) == names
    assert expand_shards(str(directory / "*.tar")) == names
    assert expand_shards([paths[1], paths[0]]) == [names[1], names[0]]
    with pytest.raises(FileNotFoundError):
        expand_shards(str(directory / "{00000..00009}.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar"):
        expand_shards(tmp_path)  # a directory without shards


def test_source_decodes_groups_and_skips_bad(shards):
    directory, _, samples = shards
    source = WebDatasetSource(directory)
    assert source.num_parts == 4
    items = list(source)
    assert len(items) == 20
    reasons = {i: s.reason for i, s in enumerate(items) if isinstance(s, SkippedSample)}
    assert reasons == {3: "missing_caption", 7: "unreadable_image"}
    good = items[0]
    assert isinstance(good, CaptionedSample) and good.key == "000000000" and good.caption == "caption 0"
    assert np.array_equal(np.asarray(good.image), samples[0][0]) and good.extra["i"] == 0
    assert [o for o, _ in source.iter_shard(1, start=3)] == [3, 4]


def test_caption_from_json_and_truncated_shard(tmp_path):
    buffer = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, format="PNG")
    png = buffer.getvalue()
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("k1.png", png), ("k1.json", b'{"caption": "from json"}'), ("k2.png", png),
                           ("k2.txt", b"second"), ("k3.png", png), ("k3.txt", b"third")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = path.read_bytes()
    items = list(WebDatasetSource(path))
    assert [s.caption for s in items] == ["from json", "second", "third"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 5 + 40])  # inside k2.png's data
    with pytest.warns(UserWarning, match="corrupt or truncated"):
        partial = list(WebDatasetSource(cut))
    assert 0 < len(partial) < 3


def _keys(stream, workers=0, batch_size=None):
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers)
    out = []
    for item in loader:
        out += [item["key"]] if isinstance(item["key"], str) else list(item["key"])
    return out


def test_stream_splits_shards_over_ranks_and_workers(shards):
    directory, _, _ = shards
    t = ImageTransform(size=12)
    all_keys = _keys(WebDatasetStream(directory, t, rank=0, world_size=1))
    assert len(all_keys) == 18  # 20 minus 2 bad
    rank_keys = [_keys(WebDatasetStream(directory, t, rank=r, world_size=2), workers=2) for r in range(2)]
    assert sorted(rank_keys[0] + rank_keys[1]) == sorted(all_keys)
    assert not set(rank_keys[0]) & set(rank_keys[1])
    # reader rank * workers + worker of 4 reads shard reader: rank 1 has readers 2 and 3
    assert {k[:5] for k in rank_keys[1]} == {"00002", "00003"}


def test_stream_position_resumes_exactly_and_counts_bad(shards):
    directory, _, _ = shards
    t = ImageTransform(size=12)

    def run(state, limit, workers):
        stream = WebDatasetStream(directory, t, rank=0, world_size=1, epochs=2, shuffle_shards=True, state=state)
        position = StreamPosition(state)
        keys = []
        for batch in DataLoader(stream, batch_size=2, num_workers=workers):
            position.update(batch)
            keys += [(int(e), k) for e, k in zip(batch["__epoch__"], batch["key"])]
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (12, 12, 3)
            if len(keys) >= limit:
                break
        return keys, position

    full, pos_full = run(None, 10**9, workers=2)
    assert len(full) == 36 and pos_full.bad_total == 4 and pos_full.bad["unreadable_image"] == 2
    first, pos = run(None, 12, workers=2)
    rest, pos_rest = run(pos.state_dict(), 10**9, workers=1)  # another number of workers is fine too
    assert sorted(first + rest) == sorted(full) and len(first + rest) == len(full)
    assert pos_rest.samples == 36 and pos_rest.bad_total == 4


def test_stream_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        WebDatasetStream([Path(__file__)], rank=2, world_size=2)
