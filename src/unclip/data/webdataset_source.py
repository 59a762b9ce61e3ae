"""Webdataset tar shards as img2dataset writes them, read with the standard ``tarfile`` module.

A shard is a tar file whose members are grouped into samples by *key*: the member name up to the first
``.`` of its base name (``00000/000000012.jpg``, ``00000/000000012.txt`` and ``00000/000000012.json`` are
one sample with key ``00000/000000012``). A sample needs an image (``.jpg``, ``.jpeg``, ``.png`` or
``.webp``) and a caption (``.txt``, else the ``caption`` field of ``.json``); otherwise, or if the image
cannot be decoded, it is a bad sample: counted and skipped, never an error. A truncated or corrupt shard
ends early with a warning.

Shards are named by a list, a directory (every ``*.tar`` in it), a glob, a brace pattern
(``data/{00000..00099}.tar``) or ``pipe:COMMAND`` (read the tar from a command's stdout, e.g.
``pipe:curl -s https://host/shard-0001.tar`` or ``pipe:aws s3 cp s3://bucket/x.tar -``).

Two ways to read them:

- :class:`WebDatasetSource` serves one shard at a time (a *part*; ``unclip embed`` shards parts across
  processes and resumes by part);
- :class:`WebDatasetStream` is a ``torch`` ``IterableDataset`` that streams samples, splitting shards
  across ranks and DataLoader workers, with a resumable position (:class:`StreamPosition`).
"""

from __future__ import annotations

import glob
import io
import json
import random
import re
import subprocess
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from unclip.data.transforms import (
    SKIP_REASONS,
    BadSample,
    CaptionedSample,
    ImageTransform,
    SkippedSample,
    clean_caption,
    decode_image,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"


# ---------------------------------------------------------------------------------------------- shards


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b`` -> ``[a00b, a01b, a02b]`` (zero padding kept); ``{x,y}`` alternatives; nested left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise ValueError(f"brace range {{{body}}} in {pattern!r} is empty (end < start)")
        width = len(r.group(1))
        options = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        options = body.split(",")
    return [s for option in options for s in expand_braces(head + option + tail)]


def expand_shards(spec: str | Path | list[str | Path]) -> list[str]:
    """Shard names from a list, a directory, a glob, a brace pattern or ``pipe:`` commands (see module doc)."""
    if isinstance(spec, (list, tuple)):
        out = [s for item in spec for s in expand_shards(item)]
    else:
        spec = str(spec)
        if spec.startswith("pipe:"):
            out = expand_braces(spec)
        elif Path(spec).is_dir():
            out = sorted(str(p) for p in Path(spec).glob("*.tar"))
            out += sorted(str(p) for p in Path(spec).glob("*.tar.gz"))
            if not out:
                raise FileNotFoundError(f"{spec} holds no .tar shards")
        else:
            out = []
            for name in expand_braces(spec):
                matches = sorted(glob.glob(name)) if any(c in name for c in "*?[") else [name]
                out += matches
            missing = [s for s in out if not Path(s).is_file()]
            if missing or not out:
                raise FileNotFoundError(f"webdataset shard(s) not found: {missing[:3] or spec}")
    if not out:
        raise ValueError(f"no shards in {spec!r}")
    return out


def _open_shard(shard: str) -> tuple[tarfile.TarFile, subprocess.Popen | None, IO[bytes] | None]:
    if shard.startswith("pipe:"):
        proc = subprocess.Popen(shard[5:], shell=True, stdout=subprocess.PIPE)
        return tarfile.open(fileobj=proc.stdout, mode="r|*"), proc, proc.stdout
    return tarfile.open(shard, mode="r:*"), None, None


def split_key(name: str) -> tuple[str, str]:
    """Member name -> (key, extension): the key ends at the first ``.`` of the base name."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def iter_tar_groups(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of a shard, in file order (consecutive members with one key).

    A corrupt or truncated tar ends the iteration with a warning instead of raising.
    """
    try:
        tar, proc, stream = _open_shard(shard)
    except (tarfile.TarError, OSError) as err:
        warnings.warn(f"cannot open shard {shard}: {err}; skipping it", stacklevel=2)
        return
    key, files = None, {}
    try:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = split_key(member.name)
            if k.rpartition("/")[2].startswith("_") or not ext:
                continue  # metadata members such as _stats.json
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            f = tar.extractfile(member)
            files[ext] = f.read() if f is not None else b""
        if key is not None:
            yield key, files
    except (tarfile.TarError, OSError, EOFError) as err:
        warnings.warn(
            f"shard {shard} is corrupt or truncated after key {key!r} ({err}); skipping the rest", stacklevel=2
        )
    finally:
        tar.close()
        if stream is not None:
            stream.close()
        if proc is not None:
            proc.wait()


def decode_group(key: str, files: dict[str, bytes], min_size: int = 1) -> CaptionedSample | SkippedSample:
    """One tar group -> a :class:`CaptionedSample` (image, caption, the ``.json`` as ``extra``) or why not."""
    extra: dict[str, Any] = {}
    if "json" in files:
        try:
            parsed = json.loads(files["json"])
            extra = parsed if isinstance(parsed, dict) else {"json": parsed}
        except (json.JSONDecodeError, UnicodeDecodeError):
            extra = {}
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    try:
        if image_ext is None:
            raise BadSample("missing_image", f"no {'/'.join(IMAGE_EXTS)} member (has {sorted(files)})")
        caption = files.get(CAPTION_EXT)
        caption = clean_caption(caption if caption is not None else extra.get("caption"))
        image = decode_image(files[image_ext], min_size)
    except BadSample as bad:
        return SkippedSample(key, bad.reason, str(bad))
    return CaptionedSample(key, image, caption, extra)


class WebDatasetSource:
    """Webdataset shards as parts: part ``k`` is shard ``k``.

    Args:
        shards: anything :func:`expand_shards` takes.
        min_size: images with a side below this are bad samples.
    """

    kind = "webdataset"

    def __init__(self, shards: str | Path | list[str | Path], min_size: int = 1):
        self.shards = expand_shards(shards)
        self.min_size = min_size

    @property
    def num_parts(self) -> int:
        return len(self.shards)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "shards": list(self.shards)}

    def iter_shard(self, k: int, start: int = 0) -> Iterator[tuple[int, CaptionedSample | SkippedSample]]:
        """``(offset, sample)`` for the samples of shard ``k`` from offset ``start`` (offsets count bad ones too)."""
        if not 0 <= k < len(self.shards):
            raise IndexError(f"shard {k} out of range [0, {len(self.shards)})")
        for offset, (key, files) in enumerate(iter_tar_groups(self.shards[k])):
            if offset >= start:
                yield offset, decode_group(key, files, self.min_size)

    def iter_part(self, part: int) -> Iterator[CaptionedSample | SkippedSample]:
        for _, sample in self.iter_shard(part):
            yield sample

    def __iter__(self) -> Iterator[CaptionedSample | SkippedSample]:
        for k in range(len(self.shards)):
            yield from self.iter_part(k)


# ---------------------------------------------------------------------------------------------- stream


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        return rank, world_size
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class StreamPosition:
    """Where a :class:`WebDatasetStream` is: per (epoch, shard) the next sample offset, and bad-sample counts.

    Call :meth:`update` with every item (or collated batch) the DataLoader hands out; save
    :meth:`state_dict` with your checkpoint and pass it as ``WebDatasetStream(..., state=...)`` to resume
    exactly after the last consumed sample (also with another number of ranks or workers).
    """

    def __init__(self, state: dict[str, Any] | None = None):
        state = state or {}
        self.offsets: dict[str, int] = dict(state.get("offsets", {}))
        self.bad: dict[str, int] = {r: 0 for r in SKIP_REASONS} | dict(state.get("bad", {}))
        self.samples = int(state.get("samples", 0))

    def update(self, item: dict[str, Any]) -> None:
        epochs, shards, offsets = (
            torch.as_tensor(item[k]).reshape(-1).tolist() for k in ("__epoch__", "__shard__", "__offset__")
        )
        for e, k, o in zip(epochs, shards, offsets):
            name = f"{e}:{k}"
            self.offsets[name] = max(self.offsets.get(name, 0), int(o) + 1)
        for reason, count in item["__bad__"].items():
            self.bad[reason] = self.bad.get(reason, 0) + int(torch.as_tensor(count).sum())
        self.samples += len(offsets)

    def state_dict(self) -> dict[str, Any]:
        return {"offsets": dict(self.offsets), "bad": dict(self.bad), "samples": self.samples}

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())


class WebDatasetStream(IterableDataset):
    """Stream ``{"image", "caption", "key", "__epoch__", "__shard__", "__offset__", "__bad__"}`` items.

    Shards of each epoch (in file order, or shuffled by ``(seed, epoch)``) are dealt round-robin to the
    ``world_size * num_workers`` readers (reader ``rank * num_workers + worker``); each reader streams its
    shards in turn. ``image`` is uint8 [S, S, 3] after ``transform`` (its random choices seeded by the
    sample key), or the PIL image without one (then give the DataLoader a ``collate_fn``). ``__bad__``
    counts the bad samples this reader skipped since its previous item, by reason.

    Args:
        source: a :class:`WebDatasetSource` (or shard spec).
        transform: image preprocessing (None = keep the PIL image).
        rank, world_size: this process's place (default: torch.distributed, else ``RANK``/``WORLD_SIZE``).
        epochs: passes over the shards (None = forever).
        shuffle_shards: new shard order every epoch.
        seed: seeds the shard order and the transform's random choices.
        state: a :meth:`StreamPosition.state_dict` to resume from.
    """

    def __init__(
        self,
        source: WebDatasetSource | str | Path | list[str | Path],
        transform: ImageTransform | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        epochs: int | None = 1,
        shuffle_shards: bool = False,
        seed: int = 0,
        state: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.source = source if isinstance(source, WebDatasetSource) else WebDatasetSource(source)
        self.transform = transform
        self.rank, self.world_size = _rank_world(rank, world_size)
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
        self.epochs = epochs
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.offsets = StreamPosition(state).offsets

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(self.source.num_parts))
        if self.shuffle_shards:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def reader_shards(self, epoch: int, reader: int, num_readers: int) -> list[int]:
        """The shards reader ``reader`` of ``num_readers`` streams in ``epoch``."""
        return self.shard_order(epoch)[reader::num_readers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        if readers > self.source.num_parts and reader == 0:
            warnings.warn(
                f"{self.source.num_parts} shards for {readers} readers (ranks x workers): some readers idle",
                stacklevel=2,
            )
        recorded = [int(name.split(":")[0]) for name in self.offsets]
        epoch = min(recorded) if recorded else 0
        pending = dict.fromkeys(SKIP_REASONS, 0)
        while self.epochs is None or epoch < self.epochs:
            for k in self.reader_shards(epoch, reader, readers):
                for offset, sample in self.source.iter_shard(k, self.offsets.get(f"{epoch}:{k}", 0)):
                    if isinstance(sample, SkippedSample):
                        pending[sample.reason] += 1
                        continue
                    image: Any = sample.image
                    if self.transform is not None:
                        try:
                            image = torch.from_numpy(self.transform(image, seed=f"{self.seed}:{sample.key}"))
                        except BadSample as bad:
                            pending[bad.reason] += 1
                            continue
                    yield {
                        "image": image,
                        "caption": sample.caption,
                        "key": sample.key,
                        "__epoch__": epoch,
                        "__shard__": k,
                        "__offset__": offset,
                        "__bad__": pending,
                    }
                    pending = dict.fromkeys(SKIP_REASONS, 0)
            epoch += 1


def write_webdataset(
    out_dir: str | Path,
    samples: Iterable[tuple[Image.Image | np.ndarray | bytes, str | None, dict[str, Any] | None]],
    per_shard: int = 10000,
    image_format: str = "jpg",
) -> list[Path]:
    """Write ``(image, caption, json)`` samples as img2dataset-style shards ``00000.tar, 00001.tar, ...``.

    Keys are ``SSSSSIIII`` (shard and index, 9 digits); each sample has ``.jpg`` (or ``.png``), ``.txt``
    (omitted when the caption is None) and ``.json``. ``image`` bytes are stored as given (e.g. a corrupt
    file for tests). Returns the shard paths.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if per_shard < 1 or per_shard > 10000:
        raise ValueError(f"per_shard must be in [1, 10000], got {per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar: tarfile.TarFile | None = None

    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    try:
        for i, (image, caption, meta) in enumerate(samples):
            shard, index = divmod(i, per_shard)
            if index == 0:
                if tar is not None:
                    tar.close()
                paths.append(out_dir / f"{shard:05d}.tar")
                tar = tarfile.open(paths[-1], "w")
            key = f"{shard:05d}{index:04d}"
            if not isinstance(image, bytes):
                buffer = io.BytesIO()
                pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
                pil.save(buffer, format="JPEG" if image_format == "jpg" else "PNG", quality=95)
                image = buffer.getvalue()
            add(f"{key}.{image_format}", image)
            if caption is not None:
                add(f"{key}.txt", caption.encode("utf-8"))
            add(f"{key}.json", json.dumps({"key": key, "caption": caption, **(meta or {})}).encode("utf-8"))
    finally:
        if tar is not None:
            tar.close()
    return paths
