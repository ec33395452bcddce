"""Scoring action recognisers on the test split: exact sequence, per-action accuracy and
temporal localisation from attention, beside the most-frequent-sequence baseline and (when its
artifact is present) the model without a temporal encoder.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from mmserve.plugins.action.checkpoint import load_recognizer
from mmserve.plugins.action.clips import ClipSpec, sample_clip
from mmserve.plugins.action.data import ActionClips, collate_clips, label_of
from mmserve.plugins.action.model import ActionRecognizer
from mmserve.plugins.action.spans import attention_span, find_actions, span_iou
from mmserve.plugins.nn.search import greedy_decode
from mmserve.plugins.tracking import RunLogger

TEST_SEED = 0  # fixed clip seed: every reported number uses the same 1000 test clips
TEST_CLIPS = 1000
MAX_LENGTH = 16  # the longest sequence is 11 words
BASELINE_DIR = Path(__file__).resolve().parent / "baseline"  # the no-temporal-encoder model
METRICS_FILE = "metrics.json"


def truth(spec: ClipSpec) -> list[tuple[str, str, tuple[int, int]]]:
    """(subject, action, span) of each action of a clip."""
    words = spec.caption.split()
    return [(words[4 * k], a.action, (a.start, a.end)) for k, a in enumerate(spec.actions)]


def score_predictions(
    specs: Sequence[ClipSpec], predictions: Sequence[list[tuple[str, str, tuple[int, int]]]]
) -> dict[str, float]:
    """Exact sequence accuracy, per-action accuracy (action k against predicted action k) and
    localisation (IoU of action k's true span with predicted action k's span; a missing
    prediction is IoU 0), over every true action."""
    assert len(specs) == len(predictions), f"{len(specs)} clips vs {len(predictions)} predictions"
    exact, actions, right, subjects, verbs, hits, hits_right, ious = 0, 0, 0, 0, 0, 0, 0, []
    counted, two_actor_actions, two_actor_subjects = 0, 0, 0  # diagnostics: where the errors are
    for spec, predicted in zip(specs, predictions):
        true = truth(spec)
        exact += [(s, a) for s, a, _ in true] == [(s, a) for s, a, _ in predicted]
        counted += len(predicted) == len(true)
        for k, (subject, action, span) in enumerate(true):
            actions += 1
            two_actor_actions += len(spec.actors) == 2
            guess = predicted[k] if k < len(predicted) else None
            iou = span_iou(span, guess[2]) if guess is not None and guess[2][1] >= guess[2][0] else 0.0
            ious.append(iou)
            hits += iou >= 0.5
            if guess is not None:
                subjects += guess[0] == subject
                two_actor_subjects += guess[0] == subject and len(spec.actors) == 2
                verbs += guess[1] == action
                if guess[:2] == (subject, action):
                    right += 1
                    hits_right += iou >= 0.5
    return {
        "action_count_accuracy": counted / max(len(specs), 1),  # as many actions named as done
        # of the actions in clips with two named digits: the right one of the two named
        "two_digit_subject_accuracy": two_actor_subjects / max(two_actor_actions, 1),
        "exact_sequence_accuracy": exact / max(len(specs), 1),
        "per_action_accuracy": right / max(actions, 1),
        "subject_accuracy": subjects / max(actions, 1),
        "action_word_accuracy": verbs / max(actions, 1),
        "localisation_iou50": hits / max(actions, 1),
        "localisation_iou50_of_correct": hits_right / max(right, 1),
        "mean_iou": sum(ious) / max(len(ious), 1),
        "clips": float(len(specs)),
        "actions": float(actions),
    }


@torch.no_grad()
def predict(
    model: ActionRecognizer, dataset: ActionClips, batch_size: int = 100, progress: bool = False
) -> list[list[tuple[str, str, tuple[int, int]]]]:
    """Greedy (subject, action, span) lists for every clip of `dataset` (label mode: one
    ("", class token, span) per clip, the span from the class token's attention)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=f"{dataset.split} clips", disable=not progress, leave=False):
        clips = [dataset.frames(i) for i in range(start, min(start + batch_size, len(dataset)))]
        batch = collate_clips(clips)
        for clip, result in zip(clips, greedy_decode(model, model.encode(batch.to(device)), MAX_LENGTH)):
            words = [model.vocab.itos[t] for t in result.tokens]
            attention = model.frame_attention(result.attention, clip.shape[0]) if result.tokens else None
            if model.config.mode == "label":
                span = attention_span(attention[0]) if attention is not None else (0, -1)
                out.append([("", words[0], span)] if words else [])
                continue
            out.append([(f.subject, f.action, f.span) for f in find_actions(words, attention)])
    return out


def most_frequent_sequence(train_clips: int = 6000, seed: int = 0) -> list[tuple[str, str]]:
    """The blind baseline's answer: the action sequence seen most often in training clips."""
    counts: Counter[str] = Counter(sample_clip("train", i, seed).caption for i in range(train_clips))
    words = counts.most_common(1)[0][0].split()
    return [(words[i], f"{words[i + 1]} {words[i + 2]}") for i in range(0, len(words), 4)]


def score_labels(specs: Sequence[ClipSpec], predictions: Sequence[list[tuple[str, str, tuple[int, int]]]]) -> dict[str, float]:
    """Single-label mode: label accuracy, and localisation of the one action from the label's attention."""
    assert len(specs) == len(predictions), f"{len(specs)} clips vs {len(predictions)} predictions"
    right, hits, ious = 0, 0, []
    for spec, predicted in zip(specs, predictions):
        guess = predicted[0] if predicted else None
        span = spec.spans[0]
        iou = span_iou(span, guess[2]) if guess is not None and guess[2][1] >= guess[2][0] else 0.0
        right += guess is not None and guess[1] == label_of(spec)
        hits += iou >= 0.5
        ious.append(iou)
    count = max(len(specs), 1)
    return {"label_accuracy": right / count, "localisation_iou50": hits / count, "mean_iou": sum(ious) / count,
            "clips": float(len(specs)), "actions": float(len(specs))}  # fmt: skip


def evaluate_model(
    model: ActionRecognizer, clips: int = TEST_CLIPS, progress: bool = True, split: str = "test", seed: int = TEST_SEED
) -> tuple[dict[str, float], list[list[tuple[str, str, tuple[int, int]]]], list[ClipSpec]]:
    mode = model.config.mode
    dataset = ActionClips(split, clips, model.vocab, seed=seed, size=model.frame_size, mode=mode)
    predictions = predict(model, dataset, progress=progress)
    specs = [dataset.spec(i) for i in range(len(dataset))]
    score = score_labels if mode == "label" else score_predictions
    return score(specs, predictions), predictions, specs


def evaluate_test_split(
    model: ActionRecognizer, logger: RunLogger, clips: int = TEST_CLIPS, progress: bool = True,
    baseline_dir: Path | None = BASELINE_DIR,
) -> dict[str, float]:  # fmt: skip
    """The model's test-split metrics, the most-frequent-sequence baseline's and, when
    `baseline_dir` holds one, the no-temporal-encoder model's (prefixed `baseline_*_`)."""
    metrics, predictions, specs = evaluate_model(model, clips, progress)
    if model.config.mode == "label":
        counts = Counter(label_of(sample_clip("train", i, 0, num_actions=1)) for i in range(6000))
        common = counts.most_common(1)[0][0]
        blind = [[("", common, (0, spec.num_frames - 1))] for spec in specs]
        metrics.update({f"baseline_most_frequent_{k}": v for k, v in score_labels(specs, blind).items()
                        if k not in ("clips", "actions")})  # fmt: skip
        logger.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        return metrics
    # The blind baseline knows no timing: its span for every action is the whole clip.
    blind = most_frequent_sequence()
    blind_predictions = [[(s, a, (0, spec.num_frames - 1)) for s, a in blind] for spec in specs]
    metrics.update({f"baseline_most_frequent_{k}": v for k, v in score_predictions(specs, blind_predictions).items()
                    if k not in ("clips", "actions")})  # fmt: skip
    if baseline_dir is not None and (Path(baseline_dir) / "config.json").is_file():
        pooled = load_recognizer(baseline_dir, next(model.parameters()).device)
        base, _, _ = evaluate_model(pooled, clips, progress)
        metrics.update({f"baseline_no_temporal_{k}": v for k, v in base.items() if k not in ("clips", "actions")})
    logger.log_metrics({f"test_{k}": v for k, v in metrics.items()})
    lines = [f"most frequent sequence: {blind}", ""]
    for spec, predicted in list(zip(specs, predictions))[:25]:
        lines.append(f"true: {truth(spec)}\npred: {predicted}")
    logger.log_text("\n".join(lines), "test_samples.txt")
    return metrics


def evaluate_artifact(artifact_dir: Path, logger: RunLogger, device: str = "cpu", clips: int = TEST_CLIPS,
                      write_metrics: bool = False) -> dict[str, float]:  # fmt: skip
    """Load an artifact directory and score it on the test split; `write_metrics` also writes
    its metrics.json (`mmserve eval --write-metrics` does that for the CLI)."""
    model = load_recognizer(Path(artifact_dir), torch.device(device))
    baseline = None if Path(artifact_dir).resolve() == BASELINE_DIR.resolve() else BASELINE_DIR
    metrics = evaluate_test_split(model, logger, clips, baseline_dir=baseline)
    if write_metrics:
        (Path(artifact_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


SELECTION = ("val", 3, 600)  # split, seed, clips: choosing between candidates, never the test clips


def main(argv: list[str] | None = None) -> None:
    """Score artifacts on a split other than the test clips, e.g. to choose between candidates:

        python -m mmserve.plugins.action.evaluate DIR [DIR ...]   # val clips of seed 3 (600)
    """
    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", type=Path, nargs="+")
    parser.add_argument("--split", default=SELECTION[0], choices=("train", "val", "test"))
    parser.add_argument("--seed", type=int, default=SELECTION[1])
    parser.add_argument("--clips", type=int, default=SELECTION[2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    keys = ("exact_sequence_accuracy", "per_action_accuracy", "localisation_iou50", "action_count_accuracy",
            "subject_accuracy", "action_word_accuracy")  # fmt: skip
    for model_dir in args.model_dirs:
        metrics, _, _ = evaluate_model(load_recognizer(model_dir), args.clips, progress=False, split=args.split, seed=args.seed)
        print(f"{model_dir}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics), flush=True)


if __name__ == "__main__":
    main()
