"""Train the forecaster on synthetic sine-plus-noise series and write its artifact directory.

    python -m mmserve_forecast.train --out examples/mmserve-forecast/src/mmserve_forecast/artifact

Gaussian NLL through `model.head.log_prob` (teacher forcing), Adam, gradient clipping; then
held-out NLL and MAE against naive last-value and seasonal-naive baselines go to metrics.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmserve_forecast.artifact_io import save_artifact
from mmserve_forecast.data import make_series
from mmserve_forecast.metrics import evaluate
from mmserve_forecast.model import ForecastConfig, ForecastModel

HISTORY_RANGE = (32, 96)  # history lengths drawn per training batch
TEST_SEED, TEST_SERIES, TEST_HISTORY = 10_000, 500, 64


def held_out(seed: int, count: int, history: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh series from a seed training never uses: history [B, N], future [B, H]."""
    series = make_series(np.random.default_rng(seed), count, history + horizon)
    return series[:, :history], series[:, history:]


def train(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(args.threads)  # 1 by default: the machine is shared
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = ForecastConfig(horizon=args.horizon)
    model = ForecastModel(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)
    started, cpu_started, losses = time.monotonic(), time.process_time(), []
    model.train()
    for _ in (bar := tqdm(range(args.steps), desc="train", mininterval=2.0)):
        history = int(rng.integers(*HISTORY_RANGE, endpoint=True))
        series = torch.from_numpy(make_series(rng, args.batch_size, history + args.horizon))
        batch = model.collate(list(series[:, :history]))
        log_prob = model.teacher_forced_log_prob(batch, series[:, history:])  # [B], normalised
        loss = -log_prob.mean() / args.horizon
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(nll=f"{np.mean(losses[-50:]):.3f}")
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    metrics = evaluate(model, *held_out(TEST_SEED, TEST_SERIES, TEST_HISTORY, args.horizon))
    metrics.update(
        train_steps=float(args.steps),
        train_wall_seconds=round(seconds, 1),  # depends on how busy the machine is
        train_cpu_seconds=round(cpu_seconds, 1),
        train_threads=float(args.threads),
    )
    save_artifact(model, args.out, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    metrics = train(parser.parse_args(argv))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
