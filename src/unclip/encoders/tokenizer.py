"""Word-level tokenizer with byte fallback for our small CLIP: it never fails on unseen text.

Text is NFKC-normalised, lower-cased and split into words (runs of letters/digits) and single
punctuation marks. A piece in the word vocabulary (the shapes-world words by default) becomes one
token; any other piece becomes a ``<bytes>`` marker followed by one token per UTF-8 byte, so every
string has an encoding and unseen words stay distinguishable.

Ids: 0 ``<pad>``, 1 ``<start>``, 2 ``<bytes>``, 3 ``<end>``, 4..259 the 256 bytes, then the words.
Sequences are ``<start> tokens… <end>`` padded with ``<pad>`` to ``max_length``; over-long text is
truncated so that the last kept token is always ``<end>``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch

from unclip.io import atomic_write_text

PAD_ID, START_ID, BYTES_ID, END_ID = 0, 1, 2, 3
BYTE_OFFSET = 4
FIRST_WORD_ID = BYTE_OFFSET + 256
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FORMAT = "unclip.word_byte_tokenizer"

# Every word the shapes-world captions use, plus common punctuation.
SHAPES_WORDS: tuple[str, ...] = (
    "a", "an", "the", "small", "large", "solid", "outlined",
    "red", "orange", "yellow", "green", "blue", "purple", "white", "black",
    "circle", "square", "diamond", "triangle", "star", "cross",
    "in", "at", "on", "top", "bottom", "left", "right", "center",
    "to", "of", "above", "below", "background",
    ",", ".", "-", "!", "?", "'",
)  # fmt: skip

_PIECE = re.compile(r"\w+|[^\w\s]")


def split_text(text: str) -> list[str]:
    """Normalise (NFKC, lower case) and split ``text`` into words and single punctuation marks."""
    return _PIECE.findall(unicodedata.normalize("NFKC", text).lower())


def truncation_warning(budget: int, dropped: str, show: int = 120) -> str:
    """The message for a prompt cut to ``budget`` tokens (the dropped text shortened to ``show`` characters)."""
    dropped = dropped.strip()
    shown = dropped if len(dropped) <= show else dropped[:show] + "..."
    return (
        f"prompt truncated to the {budget} tokens the text encoder reads; dropped {len(dropped)} characters: {shown!r}"
    )


class WordByteTokenizer:
    """Words from a fixed vocabulary, bytes for everything else.

    Args:
        words: the word vocabulary (unique, non-empty strings; ids assigned in order from 260).
        max_length: L, padded length including ``<start>`` and ``<end>`` (>= 2).
    """

    def __init__(self, words: Sequence[str] = SHAPES_WORDS, max_length: int = 32):
        words = list(words)
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (start and end tokens), got {max_length}")
        if len(set(words)) != len(words):
            dupes = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"duplicate words in tokenizer vocabulary: {dupes}")
        for w in words:
            if not isinstance(w, str) or split_text(w) != [w]:
                raise ValueError(f"vocabulary entry {w!r} is not a single normalised word or punctuation mark")
        self.words = words
        self.max_length = max_length
        self._word_to_id = {w: FIRST_WORD_ID + i for i, w in enumerate(words)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids (specials + 256 bytes + words)."""
        return FIRST_WORD_ID + len(self.words)

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """One caption -> content ids (no start/end/pad, no truncation)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r}")
        ids: list[int] = []
        for piece in split_text(text):
            word_id = self._word_to_id.get(piece)
            if word_id is not None:
                ids.append(word_id)
            else:
                ids.append(BYTES_ID)
                ids.extend(BYTE_OFFSET + b for b in piece.encode("utf-8"))
        return ids

    def text_warnings(self, text: str) -> list[str]:
        """What encoding ``text`` loses: the words cut by truncation to ``max_length``, and the words outside the
        vocabulary (spelled byte by byte, never seen as words in training). Empty when nothing is lost."""
        kept, cut, unknown = 0, [], []
        budget = self.max_length - 2
        for piece in split_text(text):
            known = piece in self._word_to_id
            cost = 1 if known else 1 + len(piece.encode("utf-8"))
            if not known and piece not in unknown:
                unknown.append(piece)
            if kept + cost <= budget and not cut:
                kept += cost
            else:
                cut.append(piece)
        warnings = []
        if cut:
            warnings.append(truncation_warning(budget, " ".join(cut)))
        if unknown:
            warnings.append(f"words the tokenizer does not know (spelled as bytes): {', '.join(unknown)}")
        return warnings

    def __call__(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids [B, L] int64, mask [B, L] bool; True on start, content and end tokens)."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise ValueError("expected at least one text, got an empty list")
        L = self.max_length
        ids = torch.full((len(texts), L), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(texts), L), dtype=torch.bool)
        for row, text in enumerate(texts):
            content = self.encode(text)[: L - 2]
            seq = [START_ID, *content, END_ID]
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = True
        return ids, mask

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids -> text (special tokens dropped; words joined by spaces, byte runs decoded)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces: list[str] = []
        pending: bytearray | None = None
        for i in ids:
            i = int(i)
            if BYTE_OFFSET <= i < FIRST_WORD_ID and pending is not None:
                pending.append(i - BYTE_OFFSET)
                continue
            if pending is not None:
                pieces.append(pending.decode("utf-8", errors="replace"))
                pending = None
            if i == BYTES_ID:
                pending = bytearray()
            elif i >= FIRST_WORD_ID:
                if i >= self.vocab_size:
                    raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
                pieces.append(self.words[i - FIRST_WORD_ID])
            elif i == END_ID:
                break
        if pending is not None:
            pieces.append(pending.decode("utf-8", errors="replace"))
        return " ".join(pieces)

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        return {"format": TOKENIZER_FORMAT, "version": 1, "max_length": self.max_length, "words": self.words}

    @classmethod
    def from_dict(cls, data: dict) -> WordByteTokenizer:
        if data.get("format") != TOKENIZER_FORMAT:
            raise ValueError(f"not an unclip word/byte tokenizer (format={data.get('format')!r})")
        if data.get("version") != 1:
            raise ValueError(f"unsupported tokenizer version {data.get('version')!r} (expected 1)")
        return cls(words=data["words"], max_length=int(data["max_length"]))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizer.json`` atomically and return its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> WordByteTokenizer:
        """Read ``directory/tokenizer.json`` (or the file itself when given a file path)."""
        path = Path(directory)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"tokenizer file {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"tokenizer file {path} must hold a JSON object")
        return cls.from_dict(data)

    def __repr__(self) -> str:
        return f"WordByteTokenizer(words={len(self.words)}, max_length={self.max_length})"
