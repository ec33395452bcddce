"""A word vocabulary with the special tokens every categorical decoder uses."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)


class Vocabulary:
    """Token <-> id mapping; ids 0..3 are <pad>, <bos>, <eos>, <unk>."""

    def __init__(self, tokens: Iterable[str]):
        words = [t for t in tokens if t not in SPECIALS]
        self.itos: list[str] = [*SPECIALS, *words]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        assert len(self.stoi) == len(self.itos), "vocabulary tokens must be unique"

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, sentences: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(word for s in sentences for word in s.split())
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    def encode(self, sentence: str) -> list[int]:
        """Token ids of a sentence wrapped in <bos> ... <eos>."""
        return [self.bos_id, *(self.stoi.get(w, self.unk_id) for w in sentence.split()), self.eos_id]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words for ids, stopping at <eos> and dropping <bos>/<pad>."""
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"tokens": self.itos}, indent=0))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        tokens = json.loads(path.read_text())["tokens"]
        assert list(tokens[: len(SPECIALS)]) == list(SPECIALS), f"{path} does not start with the special tokens"
        return cls(tokens)
