"""Caption grammar of the shapes world (docs/shapes_world.md): build a caption from the attributes it names,
and parse a caption back into them.

Grammar (fixed word order, every bracketed part optional)::

    caption := OBJECT [RELATION OBJECT] [on a|an COLOUR background]
    OBJECT  := a|an [small|large] [solid|outlined] [COLOUR] SHAPE [POSITION]

with POSITION one of ``in the top left``, ``at the top``, ``in the top right``, ``on the left``,
``in the center``, ``on the right``, ``in the bottom left``, ``at the bottom``, ``in the bottom right``
and RELATION one of ``to the left of``, ``to the right of``, ``above``, ``below``.

A *specification* (the "specified" dict) is what a caption fixes::

    {"objects": [{"shape": "circle", "colour": "red", ...}, ...],   # in caption order, 1 or 2
     "relation": "to the left of",                                  # only with two objects
     "background": "white"}                                         # only when named

Object keys other than ``shape`` (always present) appear only when the caption names them.
"""

from __future__ import annotations

import re
from typing import Any

SHAPES = ("circle", "square", "diamond", "triangle", "star", "cross")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SIZES = ("small", "large")
FILLS = ("solid", "outlined")
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
RELATIONS = ("to the left of", "to the right of", "above", "below")
POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
OBJECT_ATTRIBUTES = ("shape", "colour", "size", "fill", "position")  # record keys of one object
OPTIONAL_OBJECT_ATTRIBUTES = ("size", "fill", "colour", "position")  # caption word order (shape between)


def article(word: str) -> str:
    """``an`` before a vowel sound (``an orange``, ``an outlined``), else ``a``."""
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: dict[str, str]) -> str:
    """``a|an [size] [fill] [colour] shape [position]`` for one object spec (``shape`` required)."""
    if "shape" not in obj:
        raise ValueError(f"object spec {obj!r} has no 'shape'")
    words = [obj[k] for k in ("size", "fill", "colour") if k in obj] + [obj["shape"]]
    phrase = f"{article(words[0])} {' '.join(words)}"
    if "position" in obj:
        phrase += " " + POSITION_PHRASES[obj["position"]]
    return phrase


def caption_from_spec(spec: dict[str, Any]) -> str:
    """The caption that names exactly the attributes in ``spec`` (see the module docstring)."""
    objects = spec.get("objects", [])
    if len(objects) not in (1, 2):
        raise ValueError(f"a caption names 1 or 2 objects, got {len(objects)}")
    text = object_phrase(objects[0])
    if len(objects) == 2:
        relation = spec.get("relation")
        if relation not in RELATIONS:
            raise ValueError(f"two-object spec needs a relation in {RELATIONS}, got {relation!r}")
        text += f" {relation} {object_phrase(objects[1])}"
    if spec.get("background") is not None:
        bg = spec["background"]
        text += f" on {article(bg)} {bg} background"
    return text


_POSITION_ALT = "|".join(re.escape(p) for p in sorted(POSITION_PHRASES.values(), key=len, reverse=True))
_OBJECT_RE = (
    r"(?:a|an) (?:(?P<size{i}>small|large) )?(?:(?P<fill{i}>solid|outlined) )?"
    r"(?:(?P<colour{i}>" + "|".join(COLOURS) + r") )?(?P<shape{i}>" + "|".join(SHAPES) + r")"
    r"(?: (?P<position{i}>" + _POSITION_ALT + r"))?"
)
_CAPTION_RE = re.compile(
    "^"
    + _OBJECT_RE.format(i=0)
    + r"(?: (?P<relation>"
    + "|".join(RELATIONS)
    + r") "
    + _OBJECT_RE.format(i=1)
    + r")?"
    + r"(?: on (?:a|an) (?P<background>"
    + "|".join(COLOURS)
    + r") background)?$"
)
_PHRASE_TO_POSITION = {v: k for k, v in POSITION_PHRASES.items()}


def parse_caption(caption: str) -> dict[str, Any]:
    """Parse a caption of the shapes-world grammar into its specification.

    Case and surrounding/multiple spaces and a final full stop are ignored.

    Raises:
        ValueError: naming the caption when it does not follow the grammar.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    text = " ".join(caption.lower().strip().rstrip(".").split())
    m = _CAPTION_RE.match(text)
    if m is None:
        raise ValueError(f"caption {caption!r} does not follow the shapes-world grammar")
    groups = m.groupdict()
    n = 2 if groups["relation"] else 1
    objects = []
    for i in range(n):
        obj = {"shape": groups[f"shape{i}"]}
        for key in ("colour", "size", "fill"):
            if groups[f"{key}{i}"]:
                obj[key] = groups[f"{key}{i}"]
        if groups[f"position{i}"]:
            obj["position"] = _PHRASE_TO_POSITION[groups[f"position{i}"]]
        objects.append(obj)
    spec: dict[str, Any] = {"objects": objects}
    if n == 2:
        spec["relation"] = groups["relation"]
    if groups["background"]:
        spec["background"] = groups["background"]
    return spec
