"""The UCF-101-style loader on tiny fixture videos that the test writes with PyAV."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmserve.plugins.action.data import encode_video
from mmserve.plugins.action.ucf import VideoFolderClips, read_class_index


def _video(brightness: int, frames: int = 10) -> bytes:
    clip = torch.full((frames, 3, 16, 16), brightness, dtype=torch.uint8)
    return encode_video(clip, "avi", fps=10, scale=2)


@pytest.fixture
def ucf(tmp_path: Path) -> Path:
    classes = {"ApplyEyeMakeup": 40, "Basketball": 200}
    for name, level in classes.items():
        (tmp_path / "videos" / name).mkdir(parents=True)
        for group in (1, 2):
            (tmp_path / "videos" / name / f"v_{name}_g0{group}_c01.avi").write_bytes(_video(level))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Basketball\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\nBasketball/v_Basketball_g01_c01.avi 2\n"
    )
    (splits / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\nBasketball/v_Basketball_g02_c01.avi\n")
    return tmp_path


def test_split_lists_give_frames_and_one_class_token(ucf):
    for split in ("trainlist01.txt", "testlist01.txt"):
        data = VideoFolderClips(ucf / "videos", ucf / "splits" / split, ucf / "splits" / "classInd.txt", frames=6)
        assert len(data) == 2 and data.vocab.itos[4:] == ["applyeyemakeup", "basketball"]
        for index, level in enumerate((40, 200)):
            clip, ids = data[index]
            assert clip.shape == (6, 3, 32, 48) and clip.dtype == torch.uint8
            assert abs(clip.float().mean().item() - level) < 12  # the right video was read
            assert data.vocab.decode(ids.tolist()) == [data.label(index).lower()]


def test_bad_split_files_are_named(ucf, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 2\n")
    with pytest.raises(ValueError, match="disagrees"):
        VideoFolderClips(ucf / "videos", bad, ucf / "splits" / "classInd.txt")
    bad.write_text("Surfing/v_Surfing_g01_c01.avi\n")
    with pytest.raises(ValueError, match="not in the class index"):
        VideoFolderClips(ucf / "videos", bad, ucf / "splits" / "classInd.txt")
    bad.write_text("ApplyEyeMakeup/v_missing.avi\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        VideoFolderClips(ucf / "videos", bad, ucf / "splits" / "classInd.txt")
    index = tmp_path / "classes.txt"
    index.write_text("1 A\n3 B\n")
    with pytest.raises(ValueError, match="without gaps"):
        read_class_index(index)
