"""Training checkpoints: what they hold, atomic writing, safe loading, RNG capture and resume checks.

A checkpoint (``out_dir/checkpoint.pt``) is a dict of tensors and plain Python types only, so it loads
with ``torch.load(weights_only=True)``::

    format        "unclip.train/1"
    task          the task's name
    step          optimizer steps done
    data_position next global sample index
    ema_updates   EMA updates done (drives the EMA warm-up)
    model, ema    state dicts of the trained and the averaged network
    optimizer     AdamW state dict
    scaler        GradScaler state dict (fp16) or None
    lr_schedule   see :func:`unclip.train.lr_schedule.schedule_state`
    rng           one entry per rank: {"torch", "cuda", "numpy", "python"} generator states
    world_size    processes that wrote it
    elapsed_s     training wall time so far, over all resumes
    config        the TrainConfig as a dict
    task_settings the task's result-changing settings, flattened (see ``unclip.train.settings``)
    sha256        checksum of everything above (:func:`content_sha256`), verified on every load

The checksum covers the *content* (every key, value, tensor dtype, shape and byte), not the file's bytes,
so a checkpoint stays a plain dict that ``torch.load(weights_only=True)`` reads, and any change to a value
or a tensor's bytes (a flipped bit on disk, a bad copy) is refused on load with a one-line error.
Checkpoints written before checksums existed (no ``sha256``) load with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unclip.io import atomic_torch_save, atomic_write_text, safe_torch_load

FORMAT = "unclip.train/1"
CHECKPOINT_NAME = "checkpoint.pt"
CHECKSUM_KEY = "sha256"


def _hash_into(h: Any, value: Any) -> None:
    """Feed ``value`` to the hash ``h`` in a canonical form (type tags, sorted dict keys, raw tensor bytes)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _hash_into(h, key)
            _hash_into(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}|".encode())
        for item in value:
            _hash_into(h, item)
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        h.update(f"{type(value).__name__}:{value!r}|".encode())
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__} in a training checkpoint")


def content_sha256(state: dict[str, Any]) -> str:
    """sha256 over the content of a checkpoint dict, leaving out its own ``sha256`` entry."""
    h = hashlib.sha256()
    _hash_into(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return h.hexdigest()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (NumPy ``SeedSequence``), e.g.
    ``(seed, step, rank, micro_step)``; nearby tuples give unrelated streams."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and all CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's global generator states as tensors and plain types."""
    key, state, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "key": str(key),
            "state": torch.from_numpy(np.asarray(state, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["key"],
            npst["state"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a block (evaluation, export) without disturbing the training's global generators."""
    saved = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(saved, device)


def save_checkpoint(state: dict[str, Any], out_dir: Path, config_dict: dict[str, Any]) -> Path:
    """Write ``out_dir/checkpoint.pt`` and ``out_dir/config.json`` atomically; returns the checkpoint path.

    A crash during the write leaves the previous checkpoint intact.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    payload = {"format": FORMAT, **state, "config": config_dict}
    payload[CHECKSUM_KEY] = content_sha256(payload)
    atomic_torch_save(payload, path)
    atomic_write_text(Path(out_dir) / "config.json", json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``, check its format and verify its checksum."""
    ckpt = safe_torch_load(path, map_location="cpu", pickle_hint=None)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not an unclip training checkpoint (format {found!r}, expected {FORMAT!r})")
    saved = ckpt.get(CHECKSUM_KEY)
    if saved is None:
        warnings.warn(
            f"{path} has no checksum (written by an older unclip); its content cannot be verified",
            stacklevel=2,
        )
    else:
        try:
            actual = content_sha256(ckpt)
        except TypeError as err:
            raise ValueError(f"{path} is corrupt: {err}") from None
        if actual != saved:
            raise ValueError(
                f"{path} is corrupt: its checksum does not match its content (sha256 {actual[:16]}..., "
                f"recorded {str(saved)[:16]}...): it was damaged after it was written"
            )
    missing = [k for k in ("task", "step", "data_position", "model", "ema", "optimizer", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"training checkpoint {path} lacks {missing}; it is corrupt or from another version")
    return ckpt


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines of a metrics JSONL whose ``step`` is past ``last_step`` (written after the checkpoint
    a run resumes from) and any torn last line."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
