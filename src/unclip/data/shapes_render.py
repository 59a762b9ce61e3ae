"""Geometry and antialiased rasterisation of the shapes world (docs/shapes_world.md).

Coordinates are screen coordinates: x grows to the right, y grows downwards, and angles are measured
counter-clockwise *on screen* from +x, so a vertex at angle ``a`` on the circle of radius ``r`` around
``(cx, cy)`` is ``(cx + r cos a, cy - r sin a)``. A positive rotation turns an object counter-clockwise
on screen.

Rendering is exact supersampling: every output pixel is the mean of ``supersample x supersample``
point samples of the ideal (infinitely sharp) scene, i.e. a box-filtered downsample of a
supersampled render. Pixels fully inside a solid object therefore carry its palette colour exactly.
Samples are classified by scanlines (each sample row's inside intervals, from the polygon's edge
crossings), which gives the same answer as the point-in-shape test :func:`shape_mask` in
O(samples) rather than O(samples x edges).
"""

from __future__ import annotations

import math

import numpy as np

# Spec constants (docs/shapes_world.md).
STAR_INNER_RATIO = 0.45  # star: 10 vertices alternating r and 0.45 r, the first at 90 degrees
CROSS_HALF_WIDTH = 0.3  # cross: union of two 2r x 0.6r bars
OUTLINE_INNER_RATIO = 0.6  # outlined = shape(r) minus shape(0.6 r)
CIRCLE_SHAPE = "circle"

# Furthest point of each shape from its centre, in units of r (the cross's bar corners stick out of
# the circumcircle: sqrt(1 + 0.3^2)). Used to keep two objects apart.
SHAPE_EXTENT = {
    "circle": 1.0,
    "square": 1.0,
    "diamond": 1.0,
    "triangle": 1.0,
    "star": 1.0,
    "cross": math.hypot(1.0, CROSS_HALF_WIDTH),
}


def unit_polygon(shape: str) -> np.ndarray:
    """Vertices of ``shape`` with r = 1, unrotated, in math orientation (y up).

    Returns:
        [V, 2] float64 array of (x, y) with y pointing *up*; ``circle`` has no polygon (ValueError).
    """
    if shape == "square":
        angles = np.deg2rad(45.0 + 90.0 * np.arange(4))
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "diamond":
        angles = np.deg2rad(90.0 * np.arange(4))
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "triangle":
        angles = np.deg2rad(np.array([90.0, 210.0, 330.0]))
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = np.deg2rad(90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "cross":
        w = CROSS_HALF_WIDTH
        return np.array(
            [
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
            ],
            dtype=np.float64,
        )
    raise ValueError(f"no polygon for shape {shape!r}")


def shape_polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> np.ndarray:
    """Screen-space vertices of a polygonal shape.

    Args:
        shape: one of square, diamond, triangle, star, cross.
        cx, cy, r: centre and circumradius, in any unit (pixels or fractions of the side).
        rotation: degrees, counter-clockwise on screen.

    Returns:
        [V, 2] float64 array of (x, y) screen coordinates (y down).
    """
    pts = unit_polygon(shape) * r
    a = math.radians(rotation)
    c, s = math.cos(a), math.sin(a)
    x = pts[:, 0] * c - pts[:, 1] * s
    y = pts[:, 0] * s + pts[:, 1] * c
    return np.stack([cx + x, cy - y], axis=1)


def _inside_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points. Returns a bool array like ``px``."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(poly)
    for k in range(n):
        x1, y1 = poly[k]
        x2, y2 = poly[(k + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > py) != (y2 > py)
        x_at = x1 + (py - y1) * ((x2 - x1) / (y2 - y1))
        inside ^= crosses & (px < x_at)
    return inside


def shape_mask(
    shape: str, cx: float, cy: float, r: float, rotation: float, px: np.ndarray, py: np.ndarray
) -> np.ndarray:
    """Whether points (px, py) (same unit as cx, cy, r) lie inside the shape. Bool array like ``px``."""
    if shape == CIRCLE_SHAPE:
        return (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    return _inside_polygon(px, py, shape_polygon(shape, cx, cy, r, rotation))


def _row_intervals(shape: str, cx: float, cy: float, r: float, rotation: float, ys: np.ndarray) -> np.ndarray:
    """Inside intervals of the shape along horizontal lines ``y = ys``: [R, P, 2] (start, end) with
    ``start <= x < end`` inside (even-odd rule, the same crossings as :func:`shape_mask`); unused
    pairs are (inf, inf)."""
    y = ys[:, None]
    if shape == CIRCLE_SHAPE:
        half2 = r * r - (y - cy) ** 2
        half = np.sqrt(np.clip(half2, 0.0, None))
        start = np.where(half2 >= 0, cx - half, np.inf)
        end = np.where(half2 >= 0, np.nextafter(cx + half, np.inf), np.inf)
        return np.stack([start, end], axis=-1)
    poly = shape_polygon(shape, cx, cy, r, rotation)
    x1, y1 = poly[:, 0], poly[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x1 + (y - y1) * ((x2 - x1) / (y2 - y1))
    x_at = np.where(crosses, x_at, np.inf)
    if x_at.shape[1] % 2:
        x_at = np.concatenate([x_at, np.full((len(ys), 1), np.inf)], axis=1)
    x_at.sort(axis=1)
    return np.stack([x_at[:, 0::2], x_at[:, 1::2]], axis=-1)


def _supersampled_mask(intervals: np.ndarray, x0: float, ss: int, num_cols: int) -> np.ndarray:
    """Bool [R, num_cols] inside mask of sample columns ``x0 + (k + 0.5) / ss`` from row intervals."""
    rows = intervals.shape[0]
    with np.errstate(invalid="ignore"):
        k = np.ceil((intervals - x0) * ss - 0.5)
    k = np.nan_to_num(k, nan=num_cols, posinf=num_cols, neginf=0).clip(0, num_cols).astype(np.int64)
    base = (np.arange(rows) * (num_cols + 1))[:, None]
    diff = np.bincount((k[..., 0] + base).ravel(), minlength=rows * (num_cols + 1))
    diff = diff - np.bincount((k[..., 1] + base).ravel(), minlength=rows * (num_cols + 1))
    return np.cumsum(diff.reshape(rows, num_cols + 1)[:, :num_cols], axis=1) > 0


def object_coverage(
    shape: str,
    fill: str,
    cx: float,
    cy: float,
    r: float,
    rotation: float,
    size: int,
    supersample: int = 4,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fraction of each pixel covered by one object, on its bounding box.

    Args:
        shape, fill: the object's shape name and "solid" | "outlined".
        cx, cy, r: centre and circumradius as fractions of the side.
        rotation: degrees, counter-clockwise on screen.
        size: output side in pixels.
        supersample: point samples per pixel along each axis.

    Returns:
        (alpha [h, w] float32 in [0, 1], (y0, y1, x0, x1) pixel box the alpha covers).
    """
    cxp, cyp, rp = cx * size, cy * size, r * size
    ext = SHAPE_EXTENT[shape] * rp + 1.0
    x0, x1 = max(0, int(math.floor(cxp - ext))), min(size, int(math.ceil(cxp + ext)))
    y0, y1 = max(0, int(math.floor(cyp - ext))), min(size, int(math.ceil(cyp + ext)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (0, 0, 0, 0)
    ss = supersample
    h, w = y1 - y0, x1 - x0
    ys = (np.arange(y0, y1)[:, None] + ((np.arange(ss) + 0.5) / ss)[None, :]).reshape(-1)
    inside = _supersampled_mask(_row_intervals(shape, cxp, cyp, rp, rotation, ys), x0, ss, w * ss)
    if fill == "outlined":
        inner = _row_intervals(shape, cxp, cyp, OUTLINE_INNER_RATIO * rp, rotation, ys)
        inside &= ~_supersampled_mask(inner, x0, ss, w * ss)
    elif fill != "solid":
        raise ValueError(f"unknown fill {fill!r}; expected 'solid' or 'outlined'")
    alpha = inside.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
    return alpha, (y0, y1, x0, x1)


def composite(canvas: np.ndarray, alpha: np.ndarray, box: tuple[int, int, int, int], colour: np.ndarray) -> None:
    """Blend ``colour`` (float [3]) over ``canvas`` (float [S, S, 3], 0..255) in place with coverage ``alpha``."""
    y0, y1, x0, x1 = box
    if alpha.size == 0:
        return
    region = canvas[y0:y1, x0:x1]
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * colour
