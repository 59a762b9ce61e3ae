"""A row-indexable view over several arrays (the memory-mapped parts of an embedding cache), read per batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class RowStore:
    """Row-indexable view of several arrays with equal trailing shapes (e.g. memory-mapped ``.npy`` parts).

    ``store[rows]`` (int, slice, list, numpy array or tensor of row indices; optionally a tuple whose
    first element is the rows and the rest index the trailing axes) returns a torch tensor of those rows,
    reading only them. ``shape``, ``dtype``, ``len()`` behave like a tensor's; ``float()``, ``half()``,
    ``bool()``, ``clone()``, ``to()`` materialise the whole store first.
    """

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("RowStore needs at least one array")
        trailing = {tuple(p.shape[1:]) for p in parts}
        if len(trailing) != 1 or len({p.dtype for p in parts}) != 1:
            raise ValueError(f"RowStore parts disagree in trailing shape or dtype: {trailing}")
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])
        self.shape = torch.Size([int(self.offsets[-1]), *parts[0].shape[1:]])
        self.dtype = torch.from_numpy(np.empty(0, dtype=parts[0].dtype)).dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _row_array(self, index: Any) -> tuple[np.ndarray, bool]:
        n = len(self)
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            rows, scalar = np.array([int(index)], dtype=np.int64), True
        elif isinstance(index, slice):
            rows, scalar = np.arange(n, dtype=np.int64)[index], False
        else:
            arr = index.detach().cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise IndexError(f"boolean row mask of shape {arr.shape} for {n} rows")
                arr = np.nonzero(arr)[0]
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise IndexError(f"row indices must be integers, got dtype {arr.dtype}")
            rows, scalar = arr.astype(np.int64).reshape(-1), False
        rows = np.where(rows < 0, rows + n, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return rows, scalar

    def __getitem__(self, index: Any) -> torch.Tensor:
        rest: tuple = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        rows, scalar = self._row_array(index)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        template = self.parts[0][(np.zeros(0, dtype=np.int64), *rest)]
        out = np.empty((len(rows), *template.shape[1:]), dtype=template.dtype)
        for p in np.unique(which):
            sel = np.nonzero(which == p)[0]
            local = rows[sel] - self.offsets[p]
            if local.size > 1 and np.all(np.diff(local) == 1):  # contiguous: a plain slice reads fastest
                out[sel] = self.parts[p][(slice(int(local[0]), int(local[-1]) + 1), *rest)]
            else:
                out[sel] = self.parts[p][(local, *rest)]
        tensor = torch.from_numpy(out)
        return tensor[0] if scalar else tensor

    def head(self, n: int) -> RowStore:
        """The first ``n`` rows (no copy)."""
        parts, left = [], max(0, n)
        for p in self.parts:
            parts.append(p[: min(left, p.shape[0])])
            left -= parts[-1].shape[0]
        return RowStore(parts)

    def materialize(self) -> torch.Tensor:
        return self[:]

    def float(self) -> torch.Tensor:
        return self.materialize().float()

    def half(self) -> torch.Tensor:
        return self.materialize().half()

    def bool(self) -> torch.Tensor:
        return self.materialize().bool()

    def clone(self) -> torch.Tensor:
        return self.materialize()

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.materialize().to(*args, **kwargs)

    def __repr__(self) -> str:
        return f"RowStore(shape={tuple(self.shape)}, dtype={self.dtype}, parts={len(self.parts)})"
