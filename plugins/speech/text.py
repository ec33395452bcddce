"""Transcript normalisation and the character vocabulary (letters, space, apostrophe)."""

from __future__ import annotations

import re

from mmserve.plugins.nn.vocab import Vocabulary

CHARACTERS = [" ", "'", *"abcdefghijklmnopqrstuvwxyz"]
_DROP = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, hyphens as spaces, only letters / apostrophes / single spaces."""
    text = text.lower().replace("-", " ")
    return _SPACES.sub(" ", _DROP.sub(" ", text)).strip()


def char_vocabulary() -> Vocabulary:
    """<pad> <bos> <eos> <unk>, then space, apostrophe, a-z (32 tokens). <pad> doubles as the CTC blank."""
    return Vocabulary(CHARACTERS)


def encode_chars(vocab: Vocabulary, text: str) -> list[int]:
    """<bos> chars <eos> for a normalised transcript."""
    return [vocab.bos_id, *(vocab.stoi.get(c, vocab.unk_id) for c in text), vocab.eos_id]


def decode_chars(vocab: Vocabulary, ids: list[int]) -> str:
    """Text of decoded ids (stops at <eos>, drops specials)."""
    out = []
    for i in ids:
        if i == vocab.eos_id:
            break
        if i in (vocab.pad_id, vocab.bos_id, vocab.unk_id) or not 0 <= i < len(vocab):
            continue
        out.append(vocab.itos[i])
    return _SPACES.sub(" ", "".join(out)).strip()
