"""Where the generating commands write, checked before any work, and how.

``-o x.png`` (or ``.jpg``/``.jpeg``) is one image file; an existing directory, or a path without an image suffix,
is a directory that gets ``0000.png, 0001.png, ...`` and ``grid.png``. The target is checked for writability
(a probe file written and removed) before the model is loaded, so a bad ``-o`` fails in milliseconds, not after
sampling. PNGs carry their generation parameters in text chunks (as the server's do); JPEGs in a comment.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

FILE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


@dataclass(frozen=True)
class OutputTarget:
    """A checked ``-o``: ``path`` is a single image file (``is_file``) or a directory."""

    path: Path
    is_file: bool

    @property
    def format(self) -> str:
        return FILE_FORMATS[self.path.suffix.lower()] if self.is_file else "PNG"


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``Path('.')`` at worst)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current if current.exists() else Path(".")


def _probe_writable(directory: Path, option: str, target: Path) -> None:
    """Write and remove a small file in ``directory`` (an existing directory), or fail with one line."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".unclip-probe.", suffix=".tmp", dir=directory)
        try:
            os.write(fd, b"\0" * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise click.UsageError(f"{option} {target}: cannot write in {directory}: {err.strerror or err}") from None


def plan_output(out: Path, option: str = "-o") -> OutputTarget:
    """Decide whether ``out`` names a file or a directory and check that it can be written, creating nothing."""
    from PIL import Image

    suffix = out.suffix.lower()
    if out.exists() and out.is_dir():
        is_file = False
    elif suffix in FILE_FORMATS:
        is_file = True
    elif suffix in Image.registered_extensions():
        raise click.UsageError(
            f"{option} {out}: {suffix} images are not written; use .png or .jpg for one image, or a directory"
        )
    else:
        is_file = False
    if out.exists():
        if is_file and not out.is_file():
            raise click.UsageError(f"{option} {out} exists and is not a regular file")
        if not is_file and not out.is_dir():
            raise click.UsageError(f"{option} {out} exists and is not a directory (give a directory or a .png path)")
    directory = out.parent if is_file else out
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise click.UsageError(f"{option} {out}: {existing} is a file, not a directory")
    _probe_writable(existing, option, out)
    return OutputTarget(out, is_file)


def image_bytes(image, params: dict[str, Any], image_format: str) -> bytes:
    """Encode one image with its parameters: PNG text chunks, or a JPEG comment (JSON)."""
    from unclip.images import encode_png

    if image_format == "PNG":
        return encode_png(image, params)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=95, comment=json.dumps(params, sort_keys=True).encode())
    return buf.getvalue()


def write_images(images: list, target: OutputTarget, params: list[dict[str, Any]]) -> list[Path]:
    """Write ``images`` (with ``params[i]`` in image i) to a checked target; files are written atomically."""
    from unclip.images import make_grid
    from unclip.io import atomic_write_bytes

    if target.is_file:
        if len(images) != 1:
            raise click.UsageError(f"-o {target.path} names one file but there are {len(images)} images")
        atomic_write_bytes(target.path, image_bytes(images[0], params[0], target.format))
        return [target.path]
    target.path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, p) in enumerate(zip(images, params)):
        path = target.path / f"{i:04d}.png"
        atomic_write_bytes(path, image_bytes(image, p, "PNG"))
        paths.append(path)
    grid = target.path / "grid.png"
    atomic_write_bytes(grid, image_bytes(make_grid(images), {"grid": len(images), **_shared(params)}, "PNG"))
    return paths + [grid]


def _shared(params: list[dict[str, Any]]) -> dict[str, Any]:
    """The parameters every image of a grid shares."""
    if not params:
        return {}
    first = params[0]
    return {k: v for k, v in first.items() if all(p.get(k) == v for p in params[1:])}
