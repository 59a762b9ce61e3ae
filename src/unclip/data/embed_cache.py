"""Embedding caches: images with their CLIP embeddings, built once from any captioned source.

Training the prior and the decoder needs, per sample, the image and CLIP's image embedding z_i, pooled
text embedding z_t and token states. :func:`build_embedding_cache` runs CLIP once over a source (an
:class:`~unclip.data.image_folder.ImageFolderSource`, a :class:`~unclip.data.webdataset_source.WebDatasetSource`,
the shapes world's :class:`~unclip.data.shapes_cache.ShapesSource`, anything with ``num_parts``, ``iter_part``
and ``describe``) and writes one directory per source part::

    OUT/settings.json           build settings (checked on resume: another size/CLIP/source is refused; paths
                                are recorded resolved, and the CLIP by its weights' fingerprint too)
    OUT/part_00000/             a complete part (built in a temporary directory, then renamed)
        images.npy              uint8 [n, S, S, 3]
        image_embedding.npy     float32 [n, D]       z_i
        text_pooled.npy         float32 [n, D]       z_t
        text_tokens.npy         float16 [n, L, W]    token states
        text_mask.npy           bool [n, L]
        rows.jsonl              {"key", "caption", "extra"} per row
        part.json               {"rows": n, "bad": {reason: count}}
    OUT/index.json              written once every part exists: settings + per-part rows + totals

Parts are independent, so a build is sharded across processes (process ``r`` of ``w`` builds the parts
``k`` with ``k % w == r``) and resumes by skipping complete parts. Bad samples (unreadable image, missing
caption, tiny image) are counted per part and skipped.

:class:`EmbeddingCache` reads a cache back with the reader API every stage task uses (``images``,
``image_embedding``, ``text``, ``captions``, ``records``, ``specified``, ``meta``, ``pixels``). Row ``i``
is the ``i``-th good sample in part order. The large fields (images, token states) are memory-mapped
and gathered per batch (:class:`RowStore`), so a cache larger than memory trains. A shapes-world cache is
one of these too; its rows' ``extra`` give ``records`` and ``specified``. :func:`null_text_for_cache` checks
that a CLIP is the one that built a cache and encodes the empty caption (the prior's guidance input).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from unclip.data.cache_settings import (
    clip_fingerprint,
    describe_differences,
    resolved_clip_name,
    resolved_source,
    setting_differences,
)
from unclip.data.row_store import RowStore
from unclip.data.transforms import SKIP_REASONS, BadSample, ImageTransform, SkippedSample
from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.io import atomic_write_text

FORMAT = "unclip-embedding-cache"
VERSION = 1
FIELDS = ("images", "image_embedding", "text_pooled", "text_tokens", "text_mask")
# Settings that must agree for a resumed build to add parts to an existing cache.
SHAPES_KIND = "shapes"  # ``describe()["kind"]`` of the shapes world's source: rows carry records and specs
_SETTING_KEYS = ("format", "version", "size", "crop", "flip", "clip", "clip_sha256", "clip_dim", "token_width",
                 "max_text_length", "source", "num_parts")  # fmt: skip


class CaptionedSource(Protocol):
    """What :func:`build_embedding_cache` reads: parts of samples (good and bad), in a fixed order."""

    @property
    def num_parts(self) -> int: ...

    def iter_part(self, part: int) -> Iterator[Any]:
        """``CaptionedSample`` / ``SkippedSample`` items of part ``part``."""

    def describe(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------ reader


@dataclass
class EmbeddingCache:
    """A loaded cache. Row ``i`` is the ``i``-th sample of the cache.

    Attributes:
        images: uint8 [N, S, S, 3] (a tensor, or a memory-mapped :class:`RowStore`).
        image_embedding: float32 [N, D] CLIP image embeddings z_i.
        text: TextEmbedding of the captions (pooled float32 [N, D], tokens float16 [N, L, W] (tensor or
            RowStore), mask bool [N, L]).
        captions: per-row caption.
        records, specified: per-row attribute record and the caption's specified subset (shapes world),
            or None for captioned photos.
        meta: the build settings (``size``, ``clip``, ``clip_dim``, ``token_width``, ``max_text_length``,
            ``num``, ...).
        keys: per-row source key (file name or webdataset key), or None.
    """

    images: torch.Tensor | RowStore
    image_embedding: torch.Tensor
    text: TextEmbedding
    captions: list[str]
    records: list[dict[str, Any]] | None
    specified: list[dict[str, Any]] | None
    meta: dict[str, Any]
    keys: list[str] | None = None

    def __len__(self) -> int:
        return self.image_embedding.shape[0]

    @classmethod
    def load(cls, directory: str | Path, limit: int | None = None, mmap: bool = True) -> EmbeddingCache:
        """Read a cache, optionally only its first ``limit`` rows.

        ``mmap``: keep images and token states memory-mapped (:class:`RowStore`) instead of in memory.
        """
        directory = Path(directory)
        if (directory / "index.json").is_file() or (directory / "settings.json").is_file():
            return cls(**_load_parts(directory, limit, mmap))
        check_not_old_layout(directory)
        raise FileNotFoundError(f"no embedding cache in {directory} (index.json missing)")

    def pixels(self, indices: torch.Tensor | list[int] | range, size: int | None = None) -> torch.Tensor:
        """Images of rows ``indices`` as float32 [B, 3, size, size] in [-1, 1] (area-downsampled if smaller)."""
        x = self.images[torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.long)]
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if size is not None and size != x.shape[-1]:
            if size > x.shape[-1]:
                raise ValueError(f"cache images are {x.shape[-1]} px; cannot serve {size} px")
            x = F.interpolate(x, size=(size, size), mode="area")
        return x


def check_not_old_layout(directory: Path) -> None:
    """Refuse, in one line, a shapes cache in the chunked layout of unclip before the one cache format."""
    if (directory / "meta.json").is_file() and not (directory / "settings.json").is_file():
        raise ValueError(
            f"{directory} is a shapes cache in the old chunked layout (meta.json, chunk_*.safetensors), which this "
            "unclip no longer reads; delete it and build it again (e.g. re-run `unclip train shapes`)"
        )


def _load_parts(directory: Path, limit: int | None, mmap: bool) -> dict[str, Any]:
    index_path = directory / "index.json"
    if not index_path.is_file():
        status = cache_status(directory)
        raise FileNotFoundError(
            f"embedding cache {directory} is incomplete ({status['done']} of {status['num_parts']} parts); "
            "re-run the command that built it (e.g. the same `unclip embed`) to finish it"
        )
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{index_path} is not an {FORMAT} index (format={index.get('format')!r})")
    if index.get("version") != VERSION:
        raise ValueError(f"{index_path} has version {index.get('version')!r}; this unclip reads version {VERSION}")
    num = index["num"] if limit is None else min(limit, index["num"])
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
    rows: list[dict[str, Any]] = []
    for part in index["parts"]:
        path = directory / part["name"]
        if not (path / "part.json").is_file():
            raise FileNotFoundError(f"embedding cache {directory} lost {part['name']}; re-run `unclip embed`")
        for k in FIELDS:
            arrays[k].append(np.load(path / f"{k}.npy", mmap_mode="r" if mmap else None))
        rows += [json.loads(line) for line in (path / "rows.jsonl").read_text(encoding="utf-8").splitlines() if line]
    stores = {k: RowStore(v).head(num) for k, v in arrays.items()}
    big = {k: (stores[k] if mmap else stores[k].materialize()) for k in ("images", "text_tokens")}
    rows = rows[:num]
    meta = {k: v for k, v in index.items() if k != "parts"}
    meta["num"] = num
    shapes = isinstance(meta.get("source"), dict) and meta["source"].get("kind") == SHAPES_KIND
    return {
        "images": big["images"],
        "image_embedding": stores["image_embedding"].materialize().float(),
        "text": TextEmbedding(
            stores["text_pooled"].materialize().float(), big["text_tokens"], stores["text_mask"].materialize().bool()
        ),
        "captions": [r["caption"] for r in rows],
        "records": [r["extra"]["record"] for r in rows] if shapes else None,
        "specified": [r["extra"]["specified"] for r in rows] if shapes else None,
        "meta": meta,
        "keys": [r["key"] for r in rows],
    }


def cache_status(directory: str | Path) -> dict[str, Any]:
    """``{"num_parts", "done", "missing": [part indices], "complete"}`` of a (possibly partial) cache."""
    directory = Path(directory)
    settings = json.loads((directory / "settings.json").read_text())
    missing = [k for k in range(settings["num_parts"]) if not (directory / part_name(k) / "part.json").is_file()]
    return {
        "num_parts": settings["num_parts"],
        "done": settings["num_parts"] - len(missing),
        "missing": missing,
        "complete": not missing,
    }


def part_name(k: int) -> str:
    return f"part_{k:05d}"


# ------------------------------------------------------------------------------------------ builder


class _PartReader(IterableDataset):
    """Decode and preprocess the samples of some parts; DataLoader workers split the parts between them.

    Yields ``("row", part, key, image uint8 [S, S, 3], clip input [3, s, s], caption, extra)``,
    ``("bad", part, reason)`` and, after a part's last sample, ``("end", part)``.
    """

    def __init__(self, source: CaptionedSource, parts: list[int], transform: ImageTransform, clip_preprocess):
        super().__init__()
        self.source, self.parts, self.transform, self.clip_preprocess = source, parts, transform, clip_preprocess

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k in self.parts[worker::workers]:
            for sample in self.source.iter_part(k):
                if isinstance(sample, SkippedSample):
                    yield ("bad", k, sample.reason)
                    continue
                try:
                    square = self.transform.square(sample.image, _rng(sample.key))
                except BadSample as bad:
                    yield ("bad", k, bad.reason)
                    continue
                stored = self.transform.resize(square)
                clip_in = self.clip_preprocess([square])[0].numpy()  # numpy: no shared-memory handle per item
                yield ("row", k, sample.key, stored, clip_in, sample.caption, sample.extra)
            yield ("end", k)


def _rng(key: str):
    import random

    return random.Random(f"crop:{key}")


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


class _PartWriter:
    """Accumulates one part's rows, embeds images in batches as they arrive, writes the part atomically."""

    def __init__(self, out_dir: Path, k: int, clip: ClipEncoder, batch_size: int, size: int):
        self.out_dir, self.k, self.clip, self.batch_size, self.size = out_dir, k, clip, batch_size, size
        self.images: list[np.ndarray] = []
        self.pending: list[torch.Tensor] = []
        self.z_i: list[torch.Tensor] = []
        self.rows: list[dict[str, Any]] = []
        self.bad = dict.fromkeys(SKIP_REASONS, 0)

    def add(self, key: str, image: np.ndarray, clip_in: torch.Tensor, caption: str, extra: dict) -> None:
        self.images.append(np.asarray(image, dtype=np.uint8))
        self.pending.append(torch.as_tensor(clip_in))
        self.rows.append({"key": key, "caption": caption, "extra": extra})
        if len(self.pending) >= self.batch_size:
            self._embed_pending()

    def _embed_pending(self) -> None:
        if self.pending:
            device = getattr(self.clip, "device", torch.device("cpu"))
            self.z_i.append(self.clip.embed_images(torch.stack(self.pending).to(device)).float().cpu())
            self.pending = []

    def finish(self) -> int:
        self._embed_pending()
        n, clip = len(self.rows), self.clip
        d, length, width = clip.dim, clip.max_text_length, clip.token_width
        texts = [
            clip.embed_text([r["caption"] for r in self.rows[s : s + self.batch_size]]).to("cpu")
            for s in range(0, n, self.batch_size)
        ]
        arrays = {
            "images": np.stack(self.images) if n else np.zeros((0, self.size, self.size, 3), np.uint8),
            "image_embedding": torch.cat(self.z_i).numpy() if n else np.zeros((0, d), np.float32),
            "text_pooled": torch.cat([t.pooled.float() for t in texts]).numpy() if n else np.zeros((0, d), np.float32),
            "text_tokens": torch.cat([t.tokens.half() for t in texts]).numpy()
            if n
            else np.zeros((0, length, width), np.float16),
            "text_mask": torch.cat([t.mask.bool() for t in texts]).numpy() if n else np.zeros((0, length), bool),
        }
        final = self.out_dir / part_name(self.k)
        tmp = self.out_dir / f"{part_name(self.k)}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, array in arrays.items():
            _write_npy(tmp / f"{name}.npy", array)
        lines = [json.dumps(r, ensure_ascii=False, default=str) for r in self.rows]
        atomic_write_text(tmp / "rows.jsonl", "".join(line + "\n" for line in lines))
        atomic_write_text(tmp / "part.json", json.dumps({"rows": n, "bad": self.bad}) + "\n")
        os.rename(tmp, final)  # atomic: a part directory exists only when complete
        return n


def build_settings(source: CaptionedSource, clip: ClipEncoder, transform: ImageTransform, clip_name: str) -> dict:
    """The settings a cache records (and a resumed build must match)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "size": transform.size,
        "crop": transform.crop,
        "flip": transform.flip,
        "clip": resolved_clip_name(clip_name),
        "clip_sha256": clip_fingerprint(clip),
        "clip_dim": clip.dim,
        "token_width": clip.token_width,
        "max_text_length": clip.max_text_length,
        "source": resolved_source(source.describe()),
        "num_parts": source.num_parts,
    }


@torch.no_grad()
def build_embedding_cache(
    source: CaptionedSource,
    clip: ClipEncoder,
    out_dir: str | Path,
    transform: ImageTransform | None = None,
    clip_name: str = "shapes",
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Embed the parts of ``source`` that this process owns and has not built yet (see the module doc).

    Args:
        source: the captioned samples, in parts.
        clip: the frozen CLIP (on the device it should run on).
        out_dir: the cache directory (created).
        transform: image preprocessing of the stored images (default 64 px centre crop, no flips). CLIP
            sees the same square region at full resolution, through its own ``preprocess_pil``.
        clip_name: the CLIP's name or directory, recorded so that training can load the same CLIP.
        batch_size: CLIP batch size.
        rank, world_size: this process builds the parts ``k`` with ``k % world_size == rank``.
        num_workers: DataLoader worker processes decoding images (0 = in this process).
        progress: progress bar (default: when stderr is a terminal).

    Returns:
        ``{"built": parts built now, "rows": rows written now, "bad": {reason: count} now, "complete": bool}``;
        ``index.json`` is written by whichever process sees the last part finished.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    transform = transform or ImageTransform()
    out_dir = Path(out_dir)
    check_not_old_layout(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = build_settings(source, clip, transform, clip_name)
    settings_path = out_dir / "settings.json"
    if settings_path.exists():
        old = json.loads(settings_path.read_text())
        diff = setting_differences(old, settings, _SETTING_KEYS)
        if diff:
            raise ValueError(
                f"{out_dir} holds a cache built with other settings ({describe_differences(old, settings, diff)}); "
                "use another directory"
            )
    else:
        atomic_write_text(settings_path, json.dumps(settings, indent=1) + "\n")
    todo = [k for k in range(rank, source.num_parts, world_size) if not (out_dir / part_name(k)).is_dir()]
    for stale in out_dir.glob("part_*.tmp-*"):
        if int(stale.name[5:10]) in todo:
            shutil.rmtree(stale, ignore_errors=True)
    report = {"built": 0, "rows": 0, "bad": dict.fromkeys(SKIP_REASONS, 0), "complete": False}
    reader = _PartReader(source, todo, transform, clip.preprocess_pil)
    items = (
        iter(DataLoader(reader, batch_size=None, num_workers=num_workers, collate_fn=_identity))
        if num_workers > 0 and todo
        else iter(reader)
    )
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(todo), desc=f"embed (rank {rank})" if world_size > 1 else "embed", unit="part",
               disable=not show)  # fmt: skip
    writers: dict[int, _PartWriter] = {}
    for item in items:
        kind, k = item[0], item[1]
        writer = writers.get(k)
        if writer is None:
            writer = writers[k] = _PartWriter(out_dir, k, clip, batch_size, transform.size)
        if kind == "row":
            writer.add(*item[2:])
        elif kind == "bad":
            writer.bad[item[2]] += 1
        else:
            report["rows"] += writer.finish()
            for reason, count in writer.bad.items():
                report["bad"][reason] += count
            report["built"] += 1
            del writers[k]
            bar.update(1)
            bar.set_postfix(rows=report["rows"], bad=sum(report["bad"].values()), refresh=False)
    bar.close()
    report["complete"] = write_index(out_dir)
    return report


def _identity(x: Any) -> Any:
    return x


def write_index(out_dir: str | Path) -> bool:
    """Write ``index.json`` if every part is complete; returns whether the cache is complete."""
    out_dir = Path(out_dir)
    status = cache_status(out_dir)
    if not status["complete"]:
        return False
    settings = json.loads((out_dir / "settings.json").read_text())
    parts, bad = [], dict.fromkeys(SKIP_REASONS, 0)
    for k in range(settings["num_parts"]):
        info = json.loads((out_dir / part_name(k) / "part.json").read_text())
        parts.append({"name": part_name(k), "rows": info["rows"], "bad": info["bad"]})
        for reason, count in info["bad"].items():
            bad[reason] = bad.get(reason, 0) + count
    index = {**settings, "num": sum(p["rows"] for p in parts), "bad": bad, "parts": parts}
    atomic_write_text(out_dir / "index.json", json.dumps(index, indent=1) + "\n")
    return True


@torch.no_grad()
def null_text_for_cache(
    cache: EmbeddingCache, clip: ClipEncoder, check_rows: int = 8, atol: float = 1e-3
) -> TextEmbedding:
    """The CLIP encoding of ``""`` (batch 1, float32, CPU), after checking that ``clip`` is the CLIP that
    built ``cache``: its dimensions match and it re-encodes the first ``check_rows`` captions to the cached
    pooled embeddings within ``atol`` (relative to their scale)."""
    meta = cache.meta
    dims = {"clip_dim": clip.dim, "token_width": clip.token_width, "max_text_length": clip.max_text_length}
    wrong = {k: (meta.get(k), v) for k, v in dims.items() if meta.get(k) != v}
    if wrong:
        raise ValueError(f"the CLIP does not match the cache (cache, clip): {wrong}")
    n = min(check_rows, len(cache))
    if n:
        pooled = clip.embed_text(cache.captions[:n]).pooled.float().cpu()
        cached = cache.text.pooled[:n].float()
        err = float((pooled - cached).abs().max() / cached.abs().max().clamp(min=1e-12))
        if err > atol:
            raise ValueError(
                f"the CLIP does not reproduce the cache's text embeddings (relative error {err:.3g} > {atol}); "
                f"the cache was built with CLIP {meta.get('clip')!r}"
            )
    return clip.embed_text([""]).to(device="cpu", dtype=torch.float32)
