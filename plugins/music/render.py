"""Rendering pieces for the response: MIDI bytes -> WAV with FluidSynth and a General MIDI
soundfont (Debian packages `fluidsynth` and `fluid-soundfont-gm`, installed by the Makefile),
and a piano-roll PNG."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mmserve.plugins.errors import InputError
from mmserve.plugins.music.tokens import piece_to_roll

SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
SAMPLE_RATE = 22050


class RendererMissing(InputError):
    """Audio was asked for but the synthesiser or soundfont is not installed. HTTP 503."""

    status_code = 503


def find_soundfont() -> Path | None:
    """`MMSERVE_SOUNDFONT`, else the first installed General MIDI soundfont."""
    candidates = [os.environ.get("MMSERVE_SOUNDFONT", ""), *SOUNDFONTS]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def audio_missing() -> str | None:
    """What audio rendering lacks, or None when it can render."""
    missing = []
    if shutil.which("fluidsynth") is None:
        missing.append("the fluidsynth program (apt-get install fluidsynth)")
    if find_soundfont() is None:
        missing.append("a General MIDI soundfont (apt-get install fluid-soundfont-gm, or set MMSERVE_SOUNDFONT)")
    return " and ".join(missing) or None


def midi_to_wav(midi: bytes, timeout_s: float = 60.0) -> bytes:
    """Render MIDI bytes to a 16-bit WAV with FluidSynth; RendererMissing names what is absent."""
    missing = audio_missing()
    if missing:
        raise RendererMissing(f"format=wav needs {missing}; json, midi and png work without it")
    with tempfile.TemporaryDirectory(prefix="mmserve-music-") as tmp:
        source, target = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        source.write_bytes(midi)
        command = ["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", str(SAMPLE_RATE), "-F", str(target), "-T", "wav",
                   str(find_soundfont()), str(source)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        if done.returncode != 0 or not target.is_file():
            raise RendererMissing(f"fluidsynth failed ({done.returncode}): {done.stderr.decode(errors='replace')[-300:]}")
        return target.read_bytes()


def piano_roll_png(piece: Sequence[Sequence[int]], title: str = "") -> bytes:
    """A piano-roll image of the piece (time across, pitch up)."""
    from matplotlib.figure import Figure

    roll = piece_to_roll(piece).T.numpy() if piece else piece_to_roll([[]]).T.numpy()  # [88, T]
    figure = Figure(figsize=(max(4.0, min(16.0, 0.12 * roll.shape[1] + 2)), 3.2))
    ax = figure.add_subplot(1, 1, 1)
    ax.imshow(roll, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest", extent=(0, roll.shape[1], 21, 109))
    ax.set_xlabel("time step")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()
