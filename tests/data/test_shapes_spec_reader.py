"""An independent reader of DESIGN.md §4 must agree with the shapes world's attribute records.

The reader below is written from the spec alone: it uses only the palette, the shape definitions and the
size/position rules as numbers from the spec, never the renderer's geometry code. It reads
- the background from the four corner pixels,
- the object colour as the palette colour whose line bg -> colour best explains the non-background pixels,
- the coverage (alpha) of every pixel from that line, the centre as the alpha-weighted centroid,
- the position as the 3x3 cell of the centroid,
- the fill from whether the coverage at the centre is background (outlined) or object (solid),
- the shape from the outer boundary's radius as a function of angle around the centre: its dominant
  angular harmonic (3: triangle, 4: square/diamond/cross, 5: star, none: circle), where the 4-fold
  maxima point (45 degrees: square, 0 degrees: diamond/cross) and how deep the minima are (cross),
- the size from the pixel area, converted to a circumradius with the spec's area of that shape and fill.
"""

from __future__ import annotations

import math

import numpy as np

from unclip.data.shapes import ShapesWorld

# --- the spec, as numbers (DESIGN.md §4) ---------------------------------------------------------------
SPEC_PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 210, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SPEC_CELLS = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
]
# Area of each solid shape with circumradius r, in units of r^2, derived from the spec's vertices.
SPEC_AREA = {
    "circle": math.pi,
    "square": 2.0,  # vertices on the circumcircle at 45 + 90k
    "diamond": 2.0,
    "triangle": 3.0 * math.sqrt(3.0) / 4.0,
    "star": 10 * 0.5 * 1.0 * 0.45 * math.sin(math.radians(36)),  # 10 triangles centre-r-0.45r
    "cross": 2 * (2.0 * 0.6) - 0.6 * 0.6,  # two 2r x 0.6r bars minus their overlap
}
SPEC_OUTLINE_KEEP = 1.0 - 0.6**2  # shape(r) minus shape(0.6r)
SMALL_MAX, LARGE_MIN = 0.15, 0.22


def read_image(img: np.ndarray) -> dict:
    """Read every attribute of a single-object uint8 [S, S, 3] image from its pixels."""
    s = img.shape[0]
    pix = img.astype(np.float64)
    palette = {k: np.array(v, np.float64) for k, v in SPEC_PALETTE.items()}

    corners = [pix[0, 0], pix[0, -1], pix[-1, 0], pix[-1, -1]]
    bg_name = min(palette, key=lambda k: sum(np.abs(c - palette[k]).sum() for c in corners))
    bg = palette[bg_name]

    diff = pix - bg
    changed = np.abs(diff).max(axis=-1) > 2.0
    d = diff[changed]  # [N, 3] pixels that are not plain background

    def line_fit(colour: np.ndarray) -> tuple[float, np.ndarray]:
        v = colour - bg
        a = np.clip(d @ v / (v @ v), 0.0, 1.0)
        return float(((d - a[:, None] * v) ** 2).sum()), v

    obj_name = min((k for k in palette if k != bg_name), key=lambda k: line_fit(palette[k])[0])
    v = palette[obj_name] - bg
    alpha = np.clip(diff @ v / (v @ v), 0.0, 1.0)  # [S, S] coverage of every pixel

    ys, xs = np.mgrid[0:s, 0:s] + 0.5  # pixel centres
    area = alpha.sum()
    cx, cy = (alpha * xs).sum() / area, (alpha * ys).sum() / area
    position = SPEC_CELLS[3 * min(2, int(cy * 3 / s)) + min(2, int(cx * 3 / s))]

    def sample(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # bilinear alpha at points
        x = np.clip(x - 0.5, 0, s - 1.001)
        y = np.clip(y - 0.5, 0, s - 1.001)
        x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - x0, y - y0
        return (
            alpha[y0, x0] * (1 - fx) * (1 - fy)
            + alpha[y0, x0 + 1] * fx * (1 - fy)
            + alpha[y0 + 1, x0] * (1 - fx) * fy
            + alpha[y0 + 1, x0 + 1] * fx * fy
        )

    fill = "outlined" if sample(np.array([cx]), np.array([cy]))[0] < 0.5 else "solid"

    # Outer boundary radius rho(theta): the farthest point along each ray with coverage >= 0.5.
    thetas = np.deg2rad(np.arange(0, 360, 2.0))
    steps = np.arange(0, 0.3 * s, 0.1)
    px = cx + np.cos(thetas)[:, None] * steps[None, :]
    py = cy - np.sin(thetas)[:, None] * steps[None, :]  # screen y grows downwards
    on = sample(px, py) >= 0.4
    rho = np.array([steps[np.nonzero(row)[0].max()] if row.any() else 0.0 for row in on])
    spectrum = np.fft.rfft(rho - rho.mean()) / len(rho)
    mags = np.abs(spectrum[2:8]) / rho.mean()  # harmonic 1 only reflects an off-centre estimate
    k = int(np.argmax(mags)) + 2
    if mags.max() < 0.05:
        shape = "circle"
    elif k == 3:
        shape = "triangle"
    elif k == 5:
        shape = "star"
    elif k == 4:
        peak = (-np.angle(spectrum[4]) / 4) % (math.pi / 2)  # angle of the first 4-fold maximum
        peak_deg = math.degrees(peak)
        if 22.5 <= peak_deg < 67.5:
            shape = "square"
        elif np.percentile(rho, 5) / rho.max() < 0.55:
            shape = "cross"
        else:
            shape = "diamond"
    else:
        shape = f"unknown(k={k})"

    keep = SPEC_OUTLINE_KEEP if fill == "outlined" else 1.0
    r = math.sqrt(area / (SPEC_AREA.get(shape, 2.0) * keep)) / s if shape in SPEC_AREA else float("nan")
    size = "small" if r < (SMALL_MAX + LARGE_MIN) / 2 else "large"
    return {
        "background": bg_name,
        "colour": obj_name,
        "position": position,
        "fill": fill,
        "shape": shape,
        "size": size,
        "r": r,
        "cx": cx / s,
        "cy": cy / s,
        "harmonic": float(mags.max()),
    }


ATTRS = ("background", "colour", "position", "fill", "shape", "size")


def agreement(n: int = 300, size: int = 64, seed: int = 12345) -> tuple[float, dict[str, float], list]:
    world = ShapesWorld(seed=seed, two_object_prob=0.0)
    per = dict.fromkeys(ATTRS, 0)
    all_ok = 0
    failures = []
    for i in range(n):
        sample = world.sample(i)
        rec = sample.record
        obj = rec["objects"][0]
        truth = {"background": rec["background"], **{k: obj[k] for k in ATTRS[1:]}}
        got = read_image(world.render(sample.scene, size))
        ok = [got[k] == truth[k] for k in ATTRS]
        for k, good in zip(ATTRS, ok):
            per[k] += good
        all_ok += all(ok)
        if not all(ok):
            failures.append((i, truth, got))
    return all_ok / n, {k: v / n for k, v in per.items()}, failures


def test_independent_reader_agrees_with_records():
    overall, per, failures = agreement(300)
    print(f"reader agreement: all attributes {overall:.4f}; per attribute {per}")
    assert overall >= 0.99, failures[:5]


def test_reader_centre_and_radius_match_record():
    world = ShapesWorld(seed=777, two_object_prob=0.0)
    for i in range(40):
        sample = world.sample(i)
        obj = sample.record["objects"][0]
        got = read_image(world.render(sample.scene, 64))
        # the centroid of a symmetric shape is its centre; the area gives r (to a pixel or so)
        assert abs(got["cx"] - obj["cx"]) < 0.1 / 64 and abs(got["cy"] - obj["cy"]) < 0.1 / 64, (i, got, obj)
        if got["shape"] == obj["shape"] and got["fill"] == obj["fill"]:
            assert abs(got["r"] - obj["r"]) < 0.6 / 64, (i, got, obj)


def test_reader_can_fail():
    """The reader is not trivially agreeable: it reads a wrong record as wrong."""
    world = ShapesWorld(seed=5, two_object_prob=0.0)
    sample = world.sample(0)
    obj = sample.scene.objects[0]
    got = read_image(world.render(sample.scene, 64))
    obj.colour = next(c for c in SPEC_PALETTE if c not in (obj.colour, sample.scene.background))
    assert got["colour"] != obj.colour
