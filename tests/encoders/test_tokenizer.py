import json

import pytest
import torch

from unclip.encoders.tokenizer import (
    BYTE_OFFSET,
    BYTES_ID,
    END_ID,
    FIRST_WORD_ID,
    PAD_ID,
    SHAPES_WORDS,
    START_ID,
    WordByteTokenizer,
    split_text,
)


def test_known_words_are_single_tokens_with_start_end_and_padding():
    tok = WordByteTokenizer(max_length=10)
    ids, mask = tok(["A red circle.", "a large outlined blue star"])
    assert ids.shape == mask.shape == (2, 10)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    w = {word: FIRST_WORD_ID + i for i, word in enumerate(SHAPES_WORDS)}
    assert ids[0].tolist() == [START_ID, w["a"], w["red"], w["circle"], w["."], END_ID] + [PAD_ID] * 4
    assert mask[0].tolist() == [True] * 6 + [False] * 4
    assert mask[1].sum() == 7


def test_unseen_words_fall_back_to_bytes_and_round_trip():
    tok = WordByteTokenizer()
    text = "a crimson Ünïcode zebra 🦓 on the left"
    content = tok.encode(text)
    # "crimson" -> marker + 7 bytes
    assert content[1] == BYTES_ID and content[2:9] == [BYTE_OFFSET + b for b in b"crimson"]
    assert all(0 <= i < tok.vocab_size for i in content)
    assert tok.decode(content) == " ".join(split_text(text))
    # two unknown words in a row stay two words
    assert tok.decode(tok.encode("foo bar")) == "foo bar"
    ids, _ = tok(["", "   ", "!!??"])
    assert ids[0, :2].tolist() == [START_ID, END_ID]


def test_truncation_keeps_the_end_token():
    tok = WordByteTokenizer(max_length=6)
    ids, mask = tok(["a red circle to the left of a blue square", "supercalifragilistic"])
    assert mask.all()
    assert ids[:, -1].tolist() == [END_ID, END_ID]
    assert ids[0, :5].tolist() == [START_ID] + tok.encode("a red circle to")
    assert ids[1, 1] == BYTES_ID


def test_save_load_round_trip(tmp_path):
    tok = WordByteTokenizer(words=["hello", "world", ","], max_length=8)
    tok.save_pretrained(tmp_path)
    again = WordByteTokenizer.from_pretrained(tmp_path)
    assert again.words == tok.words and again.max_length == 8
    texts = ["Hello, world!", "unseen"]
    assert torch.equal(again(texts)[0], tok(texts)[0])


def test_bad_input_is_reported():
    tok = WordByteTokenizer()
    with pytest.raises(TypeError, match="str"):
        tok.encode(3)
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(ValueError, match="duplicate"):
        WordByteTokenizer(words=["a", "a"])
    with pytest.raises(ValueError, match="single normalised word"):
        WordByteTokenizer(words=["two words"])
    with pytest.raises(ValueError, match="max_length"):
        WordByteTokenizer(max_length=1)


def test_rejects_foreign_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
    with pytest.raises(ValueError, match="not an unclip"):
        WordByteTokenizer.from_pretrained(tmp_path)
