"""Average the weights of artifacts fine-tuned from one starting point ("model soup",
Wortsman et al. 2022): runs that left the same weights with a low learning rate stay in one
basin, and their mean is often better than each of them, at no cost when serving.

    python -m mmserve.plugins.average --out DIR RUN_A RUN_B [...]

writes DIR with the first run's files (config.json, vocabulary, ...) and the mean of every
floating-point tensor; integer tensors (counters such as BatchNorm's num_batches_tracked) are
the first run's. The runs must share one architecture: the same tensor names and shapes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmserve.plugins.artifacts import METRICS_FILE, WEIGHTS_FILE, read_weights


def average_weights(runs: list[Path]) -> dict[str, torch.Tensor]:
    assert len(runs) >= 2, "averaging needs at least two artifacts"
    weights = [read_weights(run) for run in runs]
    names = set(weights[0])
    for run, tensors in zip(runs[1:], weights[1:]):
        assert set(tensors) == names, f"{run} has other tensors than {runs[0]}: not the same architecture"
    mean: dict[str, torch.Tensor] = {}
    for name in sorted(names):
        tensors = [w[name] for w in weights]
        assert all(t.shape == tensors[0].shape for t in tensors), f"{name}: shapes differ between the artifacts"
        floating = tensors[0].is_floating_point()
        mean[name] = torch.stack([t.float() for t in tensors]).mean(dim=0).to(tensors[0].dtype) if floating else tensors[0]
    return mean


def write_average(runs: list[Path], out: Path) -> Path:
    """`out` holds the first run's files with the averaged weights (its metrics are not the soup's: dropped)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(runs[0]).iterdir():
        if item.is_file() and item.name not in (WEIGHTS_FILE, METRICS_FILE):
            shutil.copy2(item, out / item.name)
    save_file({k: v.contiguous() for k, v in average_weights(runs).items()}, str(out / WEIGHTS_FILE))
    (out / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; artifacts are shared
    config_path = out / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.setdefault("training", {})["averaged_from"] = [str(r) for r in runs]
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    print(write_average(args.runs, args.out))


if __name__ == "__main__":
    main()
