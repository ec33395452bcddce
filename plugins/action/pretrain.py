"""Frame-trunk pretraining: which named digit is where, one frame at a time.

Through the caption loss alone (BiGRU, attention, decoder) the frame CNN gets a weak, late
signal about digit identity, and the first runs learned none. Here the trunk is trained on
single frames first, with a dense target on its output grid: each cell holding a visible
named digit's centre must say which digit (0-9), every other cell says "nothing named here"
(class 10; distractors included), and regress the digit's pose there (offset within the
cell, angle, log scale), which the actions change. That teaches identity, position and pose,
what the flattened-grid frame feature must carry, at a twentieth of a clip's cost per example.

The 1x1 head is thrown away after pretraining; only the trunk (`FrameCNN.body`) is kept.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmserve.plugins.action.clips import FRAME_SIZE, ActorState, ClipSpec, sample_clip
from mmserve.plugins.action.model import ClipEncoderConfig, FrameCNN, clip_input
from mmserve.plugins.action.render import render_clip

NOTHING = 10  # grid class of cells without a visible named digit's centre
VISIBLE_ALPHA = 0.5  # a digit fading in or out counts from half its brightness
POSE_VALUES = 4 + 5  # pose (x, y, angle, log scale) and its change (x, y, angle, log scale, alpha)


def frame_targets(
    spec: ClipSpec, frames: list[int], grid: tuple[int, int], size: tuple[int, int] = FRAME_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid classes [len(frames), h, w]: the digit (0-9) whose centre lies in a cell, else
    NOTHING; and its pose [len(frames), POSE_VALUES, h, w] there (zeros elsewhere): x, y offset
    in the cell in -1..1, angle / 90 degrees, log scale, then how the pose changes from the
    previous frame to the next (`pose_change`), which is what the actions are.

    Centres include the camera jitter, as the renderer draws them; the spec's pixels are
    FRAME_SIZE pixels, scaled to `size`.
    """
    h, w = grid
    sy, sx = size[0] / FRAME_SIZE[0], size[1] / FRAME_SIZE[1]
    targets = torch.full((len(frames), h, w), NOTHING, dtype=torch.long)
    pose = torch.zeros(len(frames), POSE_VALUES, h, w)
    states = [spec.actor_states(a) for a in range(len(spec.actors))]
    for row, t in enumerate(frames):
        dx, dy = spec.jitter[t]
        for actor, per_frame in zip(spec.actors, states):
            s = per_frame[t]
            if s.alpha < VISIBLE_ALPHA:
                continue
            y, x = (s.cy + dy) * sy * h / size[0], (s.cx + dx) * sx * w / size[1]  # in cells
            i, j = min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)
            targets[row, i, j] = actor.label
            before, after = per_frame[max(t - 1, 0)], per_frame[min(t + 1, spec.num_frames - 1)]
            pose[row, :, i, j] = torch.tensor([2 * (x - j) - 1, 2 * (y - i) - 1, s.angle / 90.0, np.log(s.scale),
                                               *pose_change(before, after)])  # fmt: skip
    return targets, pose


def pose_change(before: ActorState, after: ActorState) -> tuple[float, float, float, float, float]:
    """The change of an actor's pose over two frames (dx, dy, angle, log scale, alpha), scaled
    so that a typical action step is about 1: a trunk that must say how its digit is moving
    is taught the actions themselves, not only the pose of a still frame."""
    return ((after.cx - before.cx) / 4.0, (after.cy - before.cy) / 4.0, (after.angle - before.angle) / 30.0,
            float(np.log(after.scale / before.scale)) * 5.0, (after.alpha - before.alpha) * 2.0)  # fmt: skip


def frame_batch(
    split: str, first: int, clips: int, frames_per_clip: int, grid: tuple[int, int], c: ClipEncoderConfig,
    seed: int, rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """`frames_per_clip` random frames of clips first..first+clips-1: the CNN's input
    [N, 3, H, W] (`clip_input`, so "motion" channels see the neighbouring frames), targets
    [N, h, w], pose [N, 4, h, w]."""
    size = c.frame_size
    images, targets, poses = [], [], []
    for index in range(first, first + clips):
        # epoch 1000 + ...: pretraining clips are not the clips the clip-level training draws
        spec = sample_clip(split, index, seed, epoch=1000 if split == "train" else 0)
        picked = sorted(rng.choice(spec.num_frames, size=min(frames_per_clip, spec.num_frames), replace=False).tolist())
        frames = render_clip(spec, size).unsqueeze(0)  # [1, T, 3, H, W]
        images.append(clip_input(frames, torch.tensor([spec.num_frames]), c)[0, picked])
        classes, pose = frame_targets(spec, picked, grid, size)
        targets.append(classes)
        poses.append(pose)
    return torch.cat(images), torch.cat(targets), torch.cat(poses)


@dataclass
class PretrainResult:
    steps: int
    seconds: float
    loss: float
    digit_accuracy: float  # val: cells with a named digit whose argmax is that digit
    false_alarms: float  # val: NOTHING cells predicted as a digit


@torch.no_grad()
def grid_accuracy(cnn: FrameCNN, head: nn.Module, c: ClipEncoderConfig, clips: int = 100, seed: int = 0) -> tuple[float, float]:
    """(digit accuracy on named-digit cells, false-alarm rate on other cells) over val frames."""
    was_training = cnn.training
    cnn.eval()
    frames, targets, _ = frame_batch("val", 0, clips, 4, cnn.grid, c, seed, np.random.default_rng(seed))
    predicted = head(cnn.body(frames))[:, : NOTHING + 1].argmax(1)  # [N, h, w]
    named = targets != NOTHING
    accuracy = float((predicted[named] == targets[named]).float().mean()) if bool(named.any()) else 0.0
    alarms = float((predicted[~named] != NOTHING).float().mean())
    cnn.train(was_training)
    return accuracy, alarms


def pretrain_trunk(
    cnn: FrameCNN, c: ClipEncoderConfig, steps: int, clips_per_step: int = 8, frames_per_clip: int = 8,
    lr: float = 2e-3, seed: int = 0, device: torch.device | str = "cpu", progress: bool = True,
    time_budget_s: float | None = None, val_clips: int = 100,
) -> PretrainResult:  # fmt: skip
    """Train `cnn.body` on single frames for `steps` steps (or until `time_budget_s`)."""
    head = nn.Conv2d(cnn.channels, NOTHING + 1 + POSE_VALUES, 1).to(device)  # 11 classes, then the pose values
    params = list(cnn.body.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    # "Nothing" fills most cells: down-weighted so the rare digit cells drive the trunk.
    weight = torch.ones(NOTHING + 1, device=device)
    weight[NOTHING] = 0.1
    rng = np.random.default_rng([seed, 7])
    cnn.train()
    started, running, done = time.monotonic(), 0.0, 0
    bar = tqdm(range(steps), desc="pretrain trunk", disable=not progress, leave=False)
    for step in bar:
        frames, targets, pose = frame_batch("train", step * clips_per_step, clips_per_step, frames_per_clip,
                                            cnn.grid, c, seed, rng)  # fmt: skip
        targets, pose = targets.to(device), pose.to(device)
        out = head(cnn.body(frames.to(device)))  # [N, 11 + POSE_VALUES, h, w]
        named = (targets != NOTHING).unsqueeze(1).float()  # [N, 1, h, w]: pose is only defined there
        pose_loss = (F.smooth_l1_loss(out[:, NOTHING + 1 :], pose, reduction="none") * named).sum() / named.sum().clamp_min(1)
        loss = F.cross_entropy(out[:, : NOTHING + 1], targets, weight=weight) + pose_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        done = step + 1
        bar.set_postfix(loss=f"{running:.3f}")
        if done % 200 == 0:  # printed with or without the bar: the logs of background runs
            accuracy, alarms = grid_accuracy(cnn, head, c, val_clips, seed)
            tqdm.write(f"pretrain step {done}: loss {running:.3f}, val digit accuracy {accuracy:.3f}, "
                       f"false alarms {alarms:.3f}, {time.monotonic() - started:.0f}s", file=sys.stderr)  # fmt: skip
        if time_budget_s is not None and time.monotonic() - started > time_budget_s:
            break
    accuracy, alarms = grid_accuracy(cnn, head, c, val_clips, seed)
    return PretrainResult(done, time.monotonic() - started, running, accuracy, alarms)
