"""Choose the decoding weights of a speech artifact on the val clips (never the test clips):
the CTC weight of joint decoding and the LM weight of shallow fusion, by beam-search WER.

    python -m mmserve.plugins.speech.tune --model-dir plugins/speech/weights \\
        --ctc-weights 0.3 --lm-weights 0 0.2 0.4 0.6 --stats-margin-s 0.2 --write

prints WER / CER for every pair and, with --write, stores the best pair in config.json (and
--stats-margin-s, the features' normalisation setting it was tuned with; features.py). With
--padded, each pair is scored on the val clips as they are and with half a second of their
background before and after, and chosen by the mean WER: the clean clips of training voices
alone can favour the speller alone, which padded and long recordings and new voices punish
(plugins/speech/README.md, "Results"). --new-speakers adds the val sentences read by random
speakers never heard in training (data.py's "val-voices") to the mean.

    python -m mmserve.plugins.speech.tune --model-dir plugins/speech/weights \\
        --silence-report 0.3 0.4 0.5 --stats-margin-s 0.2

prints instead the greedy WER / CER on the val clips as they are and with half a second of
their background before and after, for each silence kept around the speech (task.py's
keep_silence_s; 1000 = nothing cut).

    python -m mmserve.plugins.speech.tune --model-dir plugins/speech/weights \
        --segment-report 5 6 8 --stats-margin-s 0.2

prints instead, for each longest segment (task.py's segment_max_s), the WER / CER (beam --beam,
the artifact's decoding weights) on the val clips as they are, padded, and joined into
recordings of 2 and of 4 clips, which the server cuts into segments of at most that length.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from mmserve.plugins.speech.checkpoint import load_speech_model
from mmserve.plugins.speech.evaluate import (
    BEAM_SIZE,
    ServedParts,
    artifact_clips,
    error_rates,
    long_recordings,
    silence_padded,
    transcribe,
)
from mmserve.plugins.speech.model import ListenAttendSpell


def val_parts(artifact_dir: Path, model: ListenAttendSpell, split: str = "val") -> tuple[ServedParts, list[str]]:
    """The val clips (or "val-voices": the same sentences, new speakers) as the server takes
    them apart, and their transcripts."""
    clips = artifact_clips(artifact_dir, split)
    return ServedParts(model, [clips.wave(i) for i in range(len(clips))]), [clips.text(i) for i in range(len(clips))]


def padded_val_parts(artifact_dir: Path, model: ListenAttendSpell) -> ServedParts:
    """The val clips with their own background before and after (as `mmserve eval speech` pads the
    test clips), as the server takes them apart."""
    clips = artifact_clips(artifact_dir, "val")
    return ServedParts(model, silence_padded([clips.wave(i) for i in range(len(clips))]))


def mean_rates(scores: list[tuple[float, float]]) -> tuple[float, float]:
    """(WER, CER) averaged over the val variants, each weighing the same."""
    return sum(wer for wer, _ in scores) / len(scores), sum(cer for _, cer in scores) / len(scores)


def silence_report(artifact_dir: Path, model: ListenAttendSpell, keeps: list[float]) -> None:
    """Greedy val WER / CER, clips as they are and padded with background, per silence kept."""
    clips = artifact_clips(artifact_dir, "val")
    texts = [clips.text(i) for i in range(len(clips))]
    clean = [clips.wave(i) for i in range(len(clips))]
    padded = silence_padded(clean)
    for keep in keeps:
        row = []
        for waves in (clean, padded):
            parts = ServedParts(model, waves, keep_silence_s=keep)
            rates = error_rates(texts, parts.join(transcribe(model, parts.features, beam_size=1)))
            row.append(f"{rates['wer']:.2%} / {rates['cer']:.2%}")
        print(f"keep {keep:g} s  val greedy WER / CER: as they are {row[0]}, padded {row[1]}", flush=True)


def segment_report(artifact_dir: Path, model: ListenAttendSpell, longest: list[float], beam: int) -> None:
    """Val WER / CER per longest segment: clips as they are, padded, and in recordings of 2 and 4."""
    clips = artifact_clips(artifact_dir, "val")
    texts = [clips.text(i) for i in range(len(clips))]
    clean = [clips.wave(i) for i in range(len(clips))]
    sets = {"as they are": (clean, texts), "padded": (silence_padded(clean), texts)}
    for per_recording in (2, 4):
        recordings = long_recordings(clips, min(per_recording, len(clips)))
        sets[f"{per_recording} a recording"] = ([wave for wave, _ in recordings], [text for _, text in recordings])
    for max_s in longest:
        row, wers = [], []
        for name, (waves, references) in sets.items():
            parts = ServedParts(model, waves, segment_max_s=max_s)
            rates = error_rates(references, parts.join(transcribe(model, parts.features, beam_size=beam)))
            row.append(f"{name} {rates['wer']:.2%} / {rates['cer']:.2%}")
            wers.append(rates["wer"])
        print(f"segments up to {max_s:g} s, val WER / CER (beam {beam}): {', '.join(row)}; mean WER {sum(wers) / len(wers):.2%}",
              flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--ctc-weights", type=float, nargs="+", default=None, help="default: the artifact's")
    parser.add_argument("--lm-weights", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    parser.add_argument("--beam", type=int, default=BEAM_SIZE)
    parser.add_argument("--stats-margin-s", type=float, default=None,
                        help="normalise features on the speech +- this many seconds (default: the artifact's setting)")
    parser.add_argument("--silence-report", type=float, nargs="+", default=None, metavar="KEEP_S",
                        help="only report greedy val WER per silence kept around the speech (see above)")
    parser.add_argument("--segment-report", type=float, nargs="+", default=None, metavar="MAX_S",
                        help="only report val WER per longest segment, clips and recordings of several (see above)")
    parser.add_argument("--padded", action="store_true",
                        help="choose by the mean WER of the val clips as they are and padded with their background")
    parser.add_argument("--new-speakers", action="store_true",
                        help="score the val sentences read by new random speakers too (data.py's val-voices), in the mean")
    parser.add_argument("--write", action="store_true", help="store the best weights in config.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_speech_model(args.model_dir)
    assert model.lm is not None or args.lm_weights == [0.0], f"{args.model_dir} has no LM (python -m mmserve.plugins.speech.lm)"
    if args.stats_margin_s is not None:
        model.config.features.stats_margin_s = args.stats_margin_s
    if args.silence_report:
        silence_report(args.model_dir, model, args.silence_report)
        return
    if args.segment_report:
        segment_report(args.model_dir, model, args.segment_report, args.beam)
        return
    parts, texts = val_parts(args.model_dir, model)
    # Clean val clips alone can favour a decoding that the server's other inputs punish: with
    # --padded, the same clips with their own background around them count as much.
    variants = [("as they are", parts)] + ([("padded", padded_val_parts(args.model_dir, model))] if args.padded else [])
    if args.new_speakers:
        variants.append(("new speakers", val_parts(args.model_dir, model, "val-voices")[0]))
    ctc_weights = args.ctc_weights or [model.config.ctc_decode_weight]
    results = []
    for ctc_weight, lm_weight in itertools.product(ctc_weights, args.lm_weights):
        model.config.ctc_decode_weight, model.config.lm_weight = ctc_weight, lm_weight
        scores = []
        for name, variant in variants:
            rates = error_rates(texts, variant.join(transcribe(model, variant.features, beam_size=args.beam)))
            scores.append((rates["wer"], rates["cer"]))
            print(f"ctc {ctc_weight:.2f}  lm {lm_weight:.2f}  val beam WER {rates['wer']:.2%}  CER {rates['cer']:.2%}  ({name})", flush=True)
        results.append((*mean_rates(scores), ctc_weight, lm_weight))
    wer, cer, ctc_weight, lm_weight = min(results)
    over = f" (the mean of {', '.join(name for name, _ in variants)})" if len(variants) > 1 else ""
    print(f"best on {len(texts)} val clips{over}: ctc_decode_weight {ctc_weight}, lm_weight {lm_weight} (WER {wer:.2%}, CER {cer:.2%})")
    if args.write:
        path = args.model_dir / "config.json"
        config = json.loads(path.read_text())
        config.update(ctc_decode_weight=ctc_weight, lm_weight=lm_weight)
        config["features"] = model.config.features.to_dict()
        path.write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main()
