"""The speech task's character LM for shallow fusion: a word-internal character n-gram
(plugins/nn/ngram.py) counted over sentences from the same text source as the training
transcripts (`data.make_sentence`: frequent words and numbers), with every val and test
sentence left out, like an ASR system's separate text corpus.

    python -m mmserve.plugins.speech.lm --out plugins/speech/weights --sentences 200000

writes lm.json + lm.safetensors beside the weights; `lm_weight` in config.json turns fusion on
(chosen on the val clips: `python -m mmserve.plugins.speech.tune`).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from mmserve.plugins.nn.ngram import NGramLM
from mmserve.plugins.speech.data import SPLIT_SIZES, frequent_words, make_sentence, split_texts
from mmserve.plugins.speech.text import char_vocabulary, encode_chars

LM_SEED = 104_729  # none of the split seeds: a text stream of its own
DEFAULT_ORDER = 10


def corpus(count: int, held_out: set[str], seed: int = LM_SEED, progress: bool = False) -> Iterator[str]:
    """`count` generated sentences, none of them in `held_out`."""
    rng = random.Random(seed)
    words = frequent_words()
    made = 0
    with tqdm(total=count, desc="LM sentences", disable=not progress, leave=False) as bar:
        while made < count:
            sentence = make_sentence(rng, words)
            if sentence and sentence not in held_out:
                made += 1
                bar.update(1)
                yield sentence


def build_lm(sentences: int, order: int = DEFAULT_ORDER, sizes: dict[str, int] | None = None,
             progress: bool = False) -> NGramLM:  # fmt: skip
    """Count the LM, holding out the val and test sentences of a data set of `sizes` clips."""
    texts = split_texts(sizes or SPLIT_SIZES)
    held_out = set(texts["val"]) | set(texts["test"])
    vocab = char_vocabulary()
    space = vocab.stoi[" "]
    ids = (encode_chars(vocab, s) for s in corpus(sentences, held_out, progress=progress))
    return NGramLM.count(ids, order=order, vocab_size=len(vocab), boundaries=(space,))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write lm.json + lm.safetensors into")
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--order", type=int, default=DEFAULT_ORDER)
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}-clips", type=int, default=SPLIT_SIZES[split],
                            help=f"the data set whose val / test sentences are held out ({split})")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    sizes = {"train": args.train_clips, "val": args.val_clips, "test": args.test_clips}
    lm = build_lm(args.sentences, args.order, sizes, progress=True)
    lm.save(args.out)
    print(f"{args.out}: order {lm.config.order}, {lm.config.tokens_counted} characters counted, "
          f"{len(lm.context_keys)} contexts, {len(lm.event_keys)} n-grams, "
          f"{lm.num_bytes / 1e6:.2f} MB, {time.monotonic() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
