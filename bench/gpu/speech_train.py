"""Train the speech model on a GPU machine without installing mmserve (see speech_train.sh).

The same as `mmserve train speech --no-register --no-eval`, minus the plugin discovery that
needs an installed distribution: TrainOptions straight to the task's training function.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmserve.plugins.artifacts import write_metrics
from mmserve.plugins.speech.train import train_speech
from mmserve.plugins.task import TrainOptions
from mmserve.plugins.tracking import NullRunLogger
from mmserve.server.cli import parse_set_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    options = TrainOptions(output_dir=args.output_dir, epochs=args.epochs, batch_size=args.batch_size,
                           learning_rate=args.lr, device=args.device, extra=parse_set_options(args.set))  # fmt: skip
    started = time.monotonic()
    result = train_speech(options, NullRunLogger())
    write_metrics(result.artifact_dir, result.metrics)
    on_gpu = args.device.startswith("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name() if on_gpu else "cpu",
                      "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20) if on_gpu else None,
                      "wall_seconds": round(time.monotonic() - started, 1), "metrics": result.metrics}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
