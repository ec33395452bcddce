"""Scoring music models as the JSB benchmark does: negative log-likelihood in nats per time
step, summed over every test step (-log p(step | the steps before it), no primer) and divided
by the number of test steps. Printed beside a logistic-regression baseline, our Bernoulli-head
baseline and the published anchors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mmserve.plugins.music.checkpoint import load_music_model, read_metrics, write_metrics
from mmserve.plugins.music.data import batches, benchmark_items, harmony_items, load_harmony, load_quarter
from mmserve.plugins.music.model import MusicModel
from mmserve.plugins.music.tokens import NUM_PITCHES, Piece, piece_to_roll
from mmserve.plugins.tracking import RunLogger

# Published test NLLs (nats per quarter-note step) on the same split.
ANCHORS = {
    "LSTM (Bai et al. 2018)": 8.45,
    "GRU (Bai et al. 2018)": 8.43,
    "TCN (Bai et al. 2018)": 8.10,
    "RNN-NADE (Boulanger-Lewandowski et al. 2012)": 5.56,
}
BUNDLED_BERNOULLI = Path(__file__).resolve().parent / "weights" / "bernoulli"
HARMONY_DIR = "harmony"  # the harmonisation model inside a served artifact (see task.py)


@torch.no_grad()
def total_log_prob(
    model: MusicModel, items: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int = 32, progress: bool = False
) -> tuple[float, int]:
    """(sum of log p(step | earlier steps, source), number of steps) over (source, target) rolls."""
    model.eval()
    device = next(model.parameters()).device
    total, steps = 0.0, 0
    for batch in tqdm(list(batches(items, batch_size)), desc="scoring", disable=not progress, leave=False):
        log_p = model.step_log_probs(batch.to(device))  # [B, T], 0 on padding
        total += float(log_p.double().sum())
        steps += int(batch.target_lengths.sum())
    return total, steps


def nll_per_step(model: MusicModel, pieces: Sequence[Piece], batch_size: int = 32, progress: bool = False) -> float:
    """The benchmark figure: -sum log p(step | earlier steps) / number of steps, no primer."""
    total, steps = total_log_prob(model, benchmark_items(pieces), batch_size, progress)
    assert steps > 0, "no time steps to score"
    return -total / steps


def logistic_baseline(train: Sequence[Piece], test: Sequence[Piece], l2: float = 1e-4, iterations: int = 150) -> float:
    """88 independent logistic regressions on the previous step (zeros before the first);
    returns test NLL per step. Full-batch L-BFGS: the problem is convex and small. l2 = 1e-4 was
    chosen on `valid` from {0, 1e-4, 1e-3} (valid NLL 8.89, 8.88, 9.08)."""

    def pairs(pieces: Sequence[Piece]) -> tuple[torch.Tensor, torch.Tensor]:
        rolls = [piece_to_roll(p) for p in pieces if p]
        inputs = torch.cat([torch.cat([torch.zeros(1, NUM_PITCHES), r[:-1]]) for r in rolls])
        return inputs, torch.cat(rolls)

    x, y = pairs(train)
    weight = torch.zeros(NUM_PITCHES, NUM_PITCHES, requires_grad=True)
    bias = torch.zeros(NUM_PITCHES, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        nll = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y, reduction="sum") / len(x)
        loss = nll + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    tx, ty = pairs(test)
    with torch.no_grad():
        nll = torch.nn.functional.binary_cross_entropy_with_logits((tx @ weight + bias).double(), ty.double(), reduction="sum")
    return float(nll) / len(tx)


def harmony_nll(model: MusicModel, split: str = "test", progress: bool = False) -> float:
    """NLL per 16th-note step of alto/tenor/bass given the soprano (a harmonisation model)."""
    total, steps = total_log_prob(model, harmony_items(load_harmony()[split]), progress=progress)
    return -total / steps


def harmony_line(nll: float) -> str:
    return (f"JSB 16th-note test split (Jsb16thSeparated): NLL of alto/tenor/bass given the soprano, "
            f"nats per 16th-note step (ours, harmonisation model): {nll:.3f}")  # fmt: skip


def benchmark_table(metrics: dict[str, float]) -> str:
    rows = [(name, value) for name, value in ANCHORS.items()]
    if "logistic_test_nll" in metrics:
        rows.append(("logistic regression on the previous step (ours)", metrics["logistic_test_nll"]))
    if "bernoulli_test_nll" in metrics:
        rows.append(("Bernoulli head, independent sigmoids (ours)", metrics["bernoulli_test_nll"]))
    if "test_nll" in metrics and metrics.get("test_nll") != metrics.get("bernoulli_test_nll"):
        rows.append(("serial note head (ours, served)", metrics["test_nll"]))
    width = max(len(name) for name, _ in rows)
    lines = ["JSB Chorales, quarter-note test split: NLL in nats per time step (lower is better)"]
    lines += [f"  {name:<{width}}  {value:6.3f}" for name, value in sorted(rows, key=lambda r: -r[1])]
    return "\n".join(lines)


def evaluate_artifact(
    artifact_dir: Path, logger: RunLogger, device: str = "cpu", progress: bool = True, update_metrics: bool = True
) -> dict[str, float]:
    """Test NLL of the artifact's model, the Bernoulli baseline (bundled, or `<artifact>/bernoulli`)
    and the logistic baseline; prints the table to stderr, logs and (optionally) writes metrics.json."""
    artifact_dir = Path(artifact_dir)
    model = load_music_model(artifact_dir, torch.device(device))
    if model.trained_for == "harmony":
        metrics = {"harmony_test_nll": harmony_nll(model, "test", progress)}
        print(harmony_line(metrics["harmony_test_nll"]), file=sys.stderr)
        logger.log_metrics(metrics)
        if update_metrics:
            write_metrics(artifact_dir, {**read_metrics(artifact_dir), **metrics})
        return metrics
    data = load_quarter()
    metrics = {}
    metrics["test_nll"] = nll_per_step(model, data["test"], progress=progress)
    metrics["test_steps"] = float(sum(len(p) for p in data["test"]))
    bernoulli_dir = artifact_dir / "bernoulli" if (artifact_dir / "bernoulli").is_dir() else BUNDLED_BERNOULLI
    if (bernoulli_dir / "config.json").is_file() and model.config.head != "bernoulli":
        baseline = load_music_model(bernoulli_dir, torch.device(device))
        metrics["bernoulli_test_nll"] = nll_per_step(baseline, data["test"], progress=progress)
    elif model.config.head == "bernoulli":
        metrics["bernoulli_test_nll"] = metrics["test_nll"]
    metrics["logistic_test_nll"] = logistic_baseline(data["train"], data["test"])
    metrics.update({f"anchor_{k.split(' ')[0].lower().replace('-', '_')}": v for k, v in ANCHORS.items()})
    table = benchmark_table(metrics)
    harmony_dir = artifact_dir / HARMONY_DIR
    if (harmony_dir / "config.json").is_file():  # the served harmonisation model beside it
        metrics["harmony_test_nll"] = harmony_nll(load_music_model(harmony_dir, torch.device(device)), "test", progress)
        table += "\n" + harmony_line(metrics["harmony_test_nll"])
    print(table, file=sys.stderr)
    logger.log_metrics(metrics)
    logger.log_text(table, "benchmark_table.txt")
    if update_metrics:
        write_metrics(artifact_dir, {**read_metrics(artifact_dir), **metrics})
    return metrics


@torch.no_grad()
def generation_speed(model: MusicModel, concurrency: int, steps: int = 64, seed: int = 0) -> float:
    """Time steps generated per second (all rows together) when `concurrency` pieces are sampled
    side by side in one decoding batch from the null memory, each for `steps` steps."""
    import time

    from mmserve.plugins.nn.search import sample_decode

    model.eval()
    items = [(torch.zeros(0, NUM_PITCHES), steps)] * concurrency
    memory = model.encode(model.collate(items))
    started = time.perf_counter()
    results = sample_decode(model, memory, steps * 20, 1.0, generator=torch.Generator().manual_seed(seed))
    elapsed = time.perf_counter() - started
    assert all(r.finished for r in results), "a row did not reach its step budget"
    return concurrency * steps / elapsed


def main() -> None:
    """`python -m mmserve.plugins.music.evaluate --speed [--model-dir DIR]`: generation speed at c=1 and c=8."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_BERNOULLI.parent)
    parser.add_argument("--speed", action="store_true", help="time steps per second at concurrency 1 and 8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_music_model(args.model_dir)
    if args.speed:
        generation_speed(model, 1, 4)  # warm-up
        for concurrency in (1, 8):
            print(f"c={concurrency}: {generation_speed(model, concurrency):.1f} time steps/s")


if __name__ == "__main__":
    main()
