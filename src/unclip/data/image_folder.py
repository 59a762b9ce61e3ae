"""A folder of captioned images in the Hugging Face ``imagefolder`` convention.

::

    my_images/
      metadata.jsonl          {"file_name": "0001.jpg", "text": "a red bicycle leaning on a wall"}
      0001.jpg                 one JSON object per line; file_name is relative to the metadata file
      more/metadata.jsonl     metadata files may sit in sub-folders too (or be metadata.csv)
      more/cat.png

Every ``metadata.jsonl`` / ``metadata.csv`` under the root is read (sorted by path; rows in file order),
so the sample order is deterministic. A row whose caption is missing or empty, whose file is missing or
cannot be decoded, or whose image is tiny is a bad sample: counted and skipped, never an error. Images
that no metadata row names are ignored (they have no caption) and counted in ``unlisted``.

:class:`ImageFolderSource` serves the samples in *parts* of ``part_size`` consecutive rows (the unit that
``unclip embed`` builds, shards across processes and resumes) and as a map-style ``torch`` dataset.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from unclip.data.transforms import BadSample, CaptionedSample, SkippedSample, clean_caption, decode_image
from unclip.io import atomic_write_text

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class FolderEntry:
    """One metadata row: the image path, its caption (None when missing) and the row's other columns."""

    path: Path
    caption: Any
    extra: dict[str, Any] = field(default_factory=dict)


def _read_metadata(path: Path, caption_column: str) -> list[FolderEntry]:
    rows: list[dict[str, Any]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n} must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    else:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    entries = []
    for n, row in enumerate(rows, 1):
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path} row {n} has no 'file_name' (the imagefolder convention needs one per row)")
        extra = {k: v for k, v in row.items() if k not in ("file_name", caption_column)}
        entries.append(FolderEntry(path.parent / name, row.get(caption_column), extra))
    return entries


class ImageFolderSource:
    """Captioned images of a folder with ``metadata.jsonl`` (or ``.csv``) files.

    Args:
        root: the folder.
        caption_column: the metadata column holding the caption ("text" in the convention).
        part_size: rows per part (the unit of ``unclip embed``'s sharding and resume).
        min_size: images with a side below this are bad samples.
    """

    kind = "imagefolder"

    def __init__(self, root: str | Path, caption_column: str = "text", part_size: int = 1000, min_size: int = 1):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if not isinstance(part_size, int) or part_size < 1:
            raise ValueError(f"part_size must be an integer >= 1, got {part_size!r}")
        metadata = sorted(p for name in METADATA_NAMES for p in root.rglob(name))
        if not metadata:
            raise FileNotFoundError(
                f"{root} has no metadata.jsonl or metadata.csv: write one line per image, e.g. "
                '{"file_name": "0001.jpg", "text": "a caption"}'
            )
        self.root = root
        self.caption_column = caption_column
        self.part_size = part_size
        self.min_size = min_size
        self.entries: list[FolderEntry] = []
        for path in metadata:
            self.entries += _read_metadata(path, caption_column)
        listed = {e.path.resolve() for e in self.entries}
        self.unlisted = sum(
            1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in listed
        )

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_parts(self) -> int:
        return (len(self.entries) + self.part_size - 1) // self.part_size

    def describe(self) -> dict[str, Any]:
        """What the source is (recorded in a cache's index)."""
        return {
            "kind": self.kind,
            "root": str(self.root),
            "rows": len(self.entries),
            "caption_column": self.caption_column,
            "part_size": self.part_size,
            "unlisted": self.unlisted,
        }

    def key(self, index: int) -> str:
        return self.entries[index].path.relative_to(self.root).as_posix()

    def read(self, index: int) -> CaptionedSample | SkippedSample:
        """Row ``index`` decoded: a :class:`CaptionedSample`, or a :class:`SkippedSample` saying why not."""
        entry = self.entries[index]
        key = self.key(index)
        try:
            caption = clean_caption(entry.caption)
            image = decode_image(entry.path, self.min_size)
        except BadSample as bad:
            return SkippedSample(key, bad.reason, str(bad))
        return CaptionedSample(key, image, caption, dict(entry.extra))

    def __getitem__(self, index: int) -> CaptionedSample | SkippedSample:
        return self.read(index)

    def part_rows(self, part: int) -> range:
        if not 0 <= part < self.num_parts:
            raise IndexError(f"part {part} out of range [0, {self.num_parts})")
        return range(part * self.part_size, min((part + 1) * self.part_size, len(self.entries)))

    def iter_part(self, part: int) -> Iterator[CaptionedSample | SkippedSample]:
        """The rows of part ``part`` in order, good and bad."""
        for i in self.part_rows(part):
            yield self.read(i)

    def __iter__(self) -> Iterator[CaptionedSample | SkippedSample]:
        for part in range(self.num_parts):
            yield from self.iter_part(part)


def write_image_folder(root: str | Path, samples: Iterable[tuple[str, Image.Image | np.ndarray, str | None]]) -> Path:
    """Write ``(file_name, image, caption)`` samples as an image folder with ``metadata.jsonl``.

    ``image`` is a PIL image or uint8 [H, W, 3]; the format follows the file name's suffix. A caption of
    None writes a row without ``text`` (a bad sample when read). Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, image, caption in samples:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
        row: dict[str, Any] = {"file_name": name}
        if caption is not None:
            row["text"] = caption
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(root / "metadata.jsonl", "".join(line + "\n" for line in lines))
    return root
