"""Packed vs unpacked bidirectional RNNs (plugins/nn/birnn.py), on the bundled speech model:
one training step (forward and backward, joint CTC/attention loss) on 32 clips of similar
lengths (as training batches them) and of mixed lengths, and the listener at inference, batch
1 and a batch of 32 clips of mixed lengths.

    python -m bench.birnn [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import mmserve.plugins.speech.model as speech_model
from mmserve.plugins.nn.birnn import bidirectional_rnn
from mmserve.plugins.speech.checkpoint import load_speech_model
from mmserve.plugins.speech.model import SpeechBatch, speech_loss

WEIGHTS = Path(__file__).resolve().parent.parent / "plugins" / "speech" / "weights"


def packed_rnn(rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """What the listener ran before: pack, run, unpad."""
    packed = pack_padded_sequence(x, lengths.cpu().clamp_min(1), batch_first=True, enforce_sorted=False)
    mask = (torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    return pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0] * mask


def seconds_per_call(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    model = load_speech_model(WEIGHTS, "cpu")
    # 2-5 s clips and 50-character transcripts, like the synthetic training data: a batch of
    # similar lengths (training batches clips by length) and one of mixed lengths
    def clips(low: int, high: int) -> SpeechBatch:
        return model.collate([torch.randn(n, 40, generator=generator) for n in torch.randint(low, high, (32,), generator=generator).tolist()])

    similar, batch = clips(300, 330), clips(200, 500)
    single = model.collate([torch.randn(400, 40, generator=generator)])
    targets = torch.randint(4, len(model.vocab), (32, 51), generator=generator)
    targets[:, 0], targets[:, -1] = model.bos_id, model.eos_id

    def train_step(clips: SpeechBatch) -> Callable[[], object]:
        def run() -> None:
            model.train()
            speech_loss(model, clips, targets, 0.1, 0.5)[0].backward()

        return run

    def listen(clips) -> Callable[[], object]:
        def run() -> object:
            model.eval()
            with torch.no_grad():
                return model.listen(clips)

        return run

    print(f"threads {args.threads}, repeats {args.repeats}")
    print(f"{'':10} {'train step, similar':>20} {'train step, mixed':>18} {'listen, 32 clips':>17} {'listen, 1 clip':>15}")
    for name, rnn in (("packed", packed_rnn), ("unpacked", bidirectional_rnn)):
        speech_model.bidirectional_rnn = rnn
        works = (train_step(similar), train_step(batch), listen(batch), listen(single))
        ms = [seconds_per_call(work, args.repeats) * 1000 for work in works]
        print(f"{name:10} {ms[0]:>17.0f} ms {ms[1]:>15.0f} ms {ms[2]:>14.0f} ms {ms[3]:>12.1f} ms")
    speech_model.bidirectional_rnn = bidirectional_rnn


if __name__ == "__main__":
    main()
