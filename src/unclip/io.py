"""Atomic file writes and safe weight loading.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the target, so a
crash never leaves a half-written file. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def _file_mode() -> int:
    """0666 less the process umask: the mode a plain ``open(path, "w")`` gives a new file."""
    try:  # Linux reports the umask without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


TMP_SUFFIX = ".tmp"


def remove_orphaned_tmp(directory: str | Path) -> list[Path]:
    """Delete the temp files (``.NAME.XXXX.tmp``) that interrupted atomic writes left in ``directory``."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for tmp in directory.glob(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; a written file gets what open() would give it
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically. Keep ``obj`` to tensors and plain Python types so that it loads
    with ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _first_line(err: BaseException) -> str:
    """The most telling non-empty line of an exception's message (torch's weights_only errors put the reason
    on a "WeightsUnpickler error:" line), or the exception's type name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line.split(". ")[0]
    if not lines:
        return type(err).__name__
    line = lines[0].split(". ")[0] if len(lines[0]) > 120 else lines[0]
    return line if isinstance(err, RuntimeError) else f"{type(err).__name__}: {line}"


def safe_torch_load(
    path: str | Path,
    map_location: Any = "cpu",
    trust_pickle: bool = False,
    pickle_hint: str | None = "trust_pickle=True (on the command line: `unclip convert --trust-pickle`)",
) -> Any:
    """Load a torch file with ``weights_only=True``; full unpickling only when the caller opts in.

    Every failure is a one-line ``ValueError`` (``FileNotFoundError`` for a missing file): an empty file, a
    truncated or corrupt one, or one that needs full unpickling. ``pickle_hint`` says how the caller's user opts
    in (by default ``trust_pickle=True``, or ``unclip convert --trust-pickle``, the one command with that option);
    ``None`` where there is no way to opt in, so the message suggests none.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): an interrupted write or copy; it holds no checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised as one line with the reason
        needs_pickle = isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in str(err)
        reason = _first_line(err)
    if trust_pickle:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001
            needs_pickle, reason = False, _first_line(err)
    if needs_pickle:
        opt_in = (
            f"; opt in with {pickle_hint} only if you trust its source" if pickle_hint else ", so it is refused here"
        )
        raise ValueError(
            f"{path} cannot be loaded safely (weights_only=True failed: {reason}). "
            f"It needs full unpickling, which can run code from the file{opt_in}."
        )
    raise ValueError(f"{path} is truncated, corrupt or not a torch checkpoint ({size} bytes; {reason})")


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write a state dict as safetensors, atomically (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, save(tensors))


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
