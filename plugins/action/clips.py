"""Procedural action clips: real handwritten digits (scikit-learn's `load_digits`) that move,
rotate, zoom and fade, one action after another, with the true frame span of every action.

A clip is a *specification* first (`ClipSpec`: actors, distractors, the timed actions, noise
settings), sampled as a pure function of (split, index, seed, epoch); `render.py` turns it
into frames. Keeping the two apart lets tests check spans against the per-frame state the
renderer draws, and lets any clip be regenerated exactly without storing pixels.

Named actors are large and bright; distractors are small, dim digits that drift through the
whole clip and are never named, so "which digit acts" is read from the pixels, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mmserve.plugins.handwriting import SPLITS, digit_bank, split_samples

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Every action is a verb plus one word; the caption of a clip is
# "<subject> <verb> <word> [then <subject> <verb> <word>]...".
ACTIONS = (
    "moves left",
    "moves right",
    "moves up",
    "moves down",
    "rotates clockwise",
    "rotates anticlockwise",
    "zooms in",
    "zooms out",
    "fades out",
    "fades in",
)
CONNECTIVE = "then"

FRAME_SIZE = (32, 48)  # (H, W) of rendered clips
MIN_FRAMES, MAX_FRAMES = 16, 24
MAX_ACTIONS = 3
MIN_DURATION, MAX_DURATION = 4, 8  # frames in an action's span [start, end]
ACTOR_SIZE = (12, 14)  # side in pixels of an actor's 8x8 digit at scale 1
DISTRACTOR_SIZE = (6, 8)
ACTOR_INTENSITY = (0.8, 1.0)
DISTRACTOR_INTENSITY = (0.25, 0.4)
MOVE_X, MOVE_Y = (6.0, 10.0), (5.0, 8.0)  # pixels per move action
ROTATE = (45.0, 80.0)  # degrees per rotate action; the angle stays within +-MAX_ANGLE
MAX_ANGLE = 90.0
ZOOM_IN, ZOOM_OUT = (1.3, 1.5), (0.6, 0.75)  # scale factors; the scale stays within SCALE_RANGE
SCALE_RANGE = (0.55, 1.55)
# Handwriting augmentation (`augment=True`): the training split has 1,258 samples, and the test
# split's writers are unseen; these widen the shapes a digit may take without changing its label.
AUGMENT_SHEAR = 0.3  # x shifts by up to this fraction of y
AUGMENT_ASPECT = (0.8, 1.2)  # width over height
AUGMENT_STROKE_GAMMA = (0.6, 1.6)  # ink ** gamma: < 1 thickens strokes, > 1 thins them
START_INVISIBLE = 0.15  # chance an actor starts faded out (its first action is then "fades in")



@dataclass(frozen=True)
class ActorState:
    """Where and how an object is drawn in one frame (pixels, degrees clockwise, scale, 0..1)."""

    cx: float
    cy: float
    angle: float = 0.0
    scale: float = 1.0
    alpha: float = 1.0


@dataclass(frozen=True)
class Actor:
    label: int  # 0-9: the subject word
    sample: int  # index into digit_bank()
    size: float  # side in pixels at scale 1
    intensity: float  # brightness when fully visible
    start: ActorState
    region: tuple[float, float, float, float]  # (x_lo, x_hi, y_lo, y_hi) its centre stays in
    # handwriting augmentation (training only; identity by default): the glyph is sheared and
    # stretched in its own frame, and its strokes thickened or thinned by a gamma on the ink
    shear: float = 0.0
    aspect: float = 1.0
    stroke_gamma: float = 1.0


@dataclass(frozen=True)
class TimedAction:
    actor: int  # index into ClipSpec.actors
    action: str  # one of ACTIONS
    start: int  # first frame of the span: the state before the action
    end: int  # last frame of the span: the state after it (inclusive)
    after: ActorState  # the actor's state from `end` on


@dataclass(frozen=True)
class Distractor:
    sample: int
    size: float
    intensity: float
    x: float
    y: float
    vx: float  # pixels per frame; bounces off the frame edges
    vy: float


@dataclass(frozen=True)
class ClipSpec:
    num_frames: int
    actors: tuple[Actor, ...]
    actions: tuple[TimedAction, ...]  # in time order, spans disjoint
    distractors: tuple[Distractor, ...]
    background: float  # mean background level 0..1
    noise_std: float  # per-frame pixel noise
    jitter: tuple[tuple[float, float], ...]  # camera offset (dx, dy) per frame
    noise_seed: int

    @property
    def caption(self) -> str:
        return f" {CONNECTIVE} ".join(f"{NUMBER_WORDS[self.actors[a.actor].label]} {a.action}" for a in self.actions)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """(start, end) frame of each action, inclusive."""
        return [(a.start, a.end) for a in self.actions]

    def actor_states(self, actor: int) -> list[ActorState]:
        """The actor's state in every frame: constant between actions, linear within one."""
        states = []
        timeline = [a for a in self.actions if a.actor == actor]
        for frame in range(self.num_frames):
            state = self.actors[actor].start
            for act in timeline:  # `state` is the state before `act` until it is passed
                if frame >= act.end:
                    state = act.after
                elif frame > act.start:
                    state = _lerp(state, act.after, (frame - act.start) / (act.end - act.start))
                    break
                else:
                    break
            states.append(state)
        return states


def _lerp(a: ActorState, b: ActorState, t: float) -> ActorState:
    mix = lambda u, v: u + (v - u) * t  # noqa: E731
    return ActorState(mix(a.cx, b.cx), mix(a.cy, b.cy), mix(a.angle, b.angle), mix(a.scale, b.scale), mix(a.alpha, b.alpha))


def _apply(action: str, state: ActorState, region: tuple[float, float, float, float], rng: np.random.Generator) -> ActorState | None:
    """The state after `action`, with a random amount, or None when it is not possible from `state`."""
    x_lo, x_hi, y_lo, y_hi = region
    visible = state.alpha > 0.5
    if action == "fades in":
        return ActorState(state.cx, state.cy, state.angle, state.scale, 1.0) if not visible else None
    if not visible:  # nothing but fading in can be seen on an invisible digit
        return None
    if action == "fades out":
        return ActorState(state.cx, state.cy, state.angle, state.scale, 0.0)
    if action.startswith("moves"):
        lo, hi = MOVE_X if action in ("moves left", "moves right") else MOVE_Y
        room = {
            "moves left": state.cx - x_lo,
            "moves right": x_hi - state.cx,
            "moves up": state.cy - y_lo,
            "moves down": y_hi - state.cy,
        }[action]
        if room < lo:
            return None
        step = rng.uniform(lo, min(hi, room))
        dx = {"moves left": -step, "moves right": step}.get(action, 0.0)
        dy = {"moves up": -step, "moves down": step}.get(action, 0.0)
        return ActorState(state.cx + dx, state.cy + dy, state.angle, state.scale, state.alpha)
    if action.startswith("rotates"):
        sign = 1.0 if action == "rotates clockwise" else -1.0
        room = MAX_ANGLE - sign * state.angle
        if room < ROTATE[0]:
            return None
        angle = state.angle + sign * rng.uniform(ROTATE[0], min(ROTATE[1], room))
        return ActorState(state.cx, state.cy, angle, state.scale, state.alpha)
    if action in ("zooms in", "zooms out"):
        lo, hi = ZOOM_IN if action == "zooms in" else ZOOM_OUT
        factors = [f for f in np.linspace(lo, hi, 9) if SCALE_RANGE[0] <= state.scale * f <= SCALE_RANGE[1]]
        if not factors:
            return None
        factor = rng.uniform(min(factors), max(factors))
        return ActorState(state.cx, state.cy, state.angle, state.scale * factor, state.alpha)
    raise ValueError(f"unknown action {action!r}")


def clip_rng(split: str, index: int, seed: int = 0, epoch: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), epoch, index])


def _timing(count: int, rng: np.random.Generator) -> tuple[int, list[tuple[int, int]]]:
    durations = [int(rng.integers(MIN_DURATION, MAX_DURATION + 1)) for _ in range(count)]
    gaps = [int(rng.integers(0, 4))] + [int(rng.integers(0, 3)) for _ in range(count - 1)]
    while sum(durations) + sum(gaps) > MAX_FRAMES:  # shorten the longest part until it fits
        longest = max(range(count), key=lambda i: durations[i])
        if durations[longest] > MIN_DURATION:
            durations[longest] -= 1
        else:
            gaps[max(range(count), key=lambda i: gaps[i])] -= 1
    needed = sum(durations) + sum(gaps)
    num_frames = int(rng.integers(max(MIN_FRAMES, needed), MAX_FRAMES + 1))
    spans, frame = [], 0
    for gap, duration in zip(gaps, durations):
        frame += gap
        spans.append((frame, frame + duration - 1))
        frame += duration
    return num_frames, spans


def _sample_actor(label_sample: int, region: tuple[float, float, float, float], rng: np.random.Generator) -> Actor:
    labels = digit_bank()[1]
    x_lo, x_hi, y_lo, y_hi = region
    start = ActorState(
        cx=float(rng.uniform(x_lo, x_hi)),
        cy=float(rng.uniform(y_lo, y_hi)),
        angle=float(rng.uniform(-15, 15)),
        scale=1.0,
        alpha=0.0 if rng.random() < START_INVISIBLE else 1.0,
    )
    return Actor(int(labels[label_sample]), int(label_sample), float(rng.uniform(*ACTOR_SIZE)),
                 float(rng.uniform(*ACTOR_INTENSITY)), start, region)  # fmt: skip


def _augment_actor(actor: Actor, rng: np.random.Generator) -> Actor:
    return replace(
        actor,
        shear=float(rng.uniform(-AUGMENT_SHEAR, AUGMENT_SHEAR)),
        aspect=float(np.exp(rng.uniform(*np.log(AUGMENT_ASPECT)))),
        stroke_gamma=float(np.exp(rng.uniform(*np.log(AUGMENT_STROKE_GAMMA)))),
    )


def sample_clip(
    split: str, index: int, seed: int = 0, epoch: int = 0, num_actions: int | None = None, augment: bool = False
) -> ClipSpec:
    """The clip `index` of `split`: a pure function of its arguments.

    `num_actions` (single-label clips): one named digit performing exactly that many actions.
    `augment`: the named digits' handwriting is distorted (`_augment_actor`), drawn from a
    generator of its own, so everything else about the clip is the clip without it.
    """
    rng = clip_rng(split, index, seed, epoch)
    pool = split_samples(split)
    labels = digit_bank()[1]
    height, width = FRAME_SIZE
    num_actors = 1 if rng.random() < 0.5 else 2
    drawn_actions = int(rng.integers(num_actors, MAX_ACTIONS + 1))
    if num_actions is None:
        num_actions = drawn_actions
    else:  # drawn all the same, so the default clips stay what they were
        assert 1 <= num_actions <= MAX_ACTIONS, f"num_actions must be 1..{MAX_ACTIONS}, got {num_actions}"
        num_actors = 1
    if num_actors == 1:
        regions = [(9.0, width - 9.0, 9.0, height - 9.0)]
    else:  # left and right halves, so the two named digits never cross
        regions = [(9.0, width / 2 - 4.0, 9.0, height - 9.0), (width / 2 + 4.0, width - 9.0, 9.0, height - 9.0)]
    samples = [int(rng.choice(pool))]
    while len(samples) < num_actors:
        candidate = int(rng.choice(pool))
        if labels[candidate] != labels[samples[0]]:  # two different subjects
            samples.append(candidate)
    actors = [_sample_actor(s, r, rng) for s, r in zip(samples, regions)]
    # Who acts when: every actor at least once, otherwise at random.
    subjects = list(range(num_actors)) + [int(rng.integers(num_actors)) for _ in range(num_actions - num_actors)]
    rng.shuffle(subjects)
    num_frames, spans = _timing(num_actions, rng)
    states = [a.start for a in actors]
    actions = []
    for subject, (start, end) in zip(subjects, spans):
        options = [(name, after) for name in ACTIONS if (after := _apply(name, states[subject], actors[subject].region, rng))]
        name, after = options[int(rng.integers(len(options)))]
        actions.append(TimedAction(subject, name, start, end, after))
        states[subject] = after
    if augment:
        augment_rng = np.random.default_rng([seed, SPLITS.index(split), epoch, index, 1])
        actors = [_augment_actor(a, augment_rng) for a in actors]
    distractors = []
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        speed, heading = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
        distractors.append(
            Distractor(int(rng.choice(pool)), float(rng.uniform(*DISTRACTOR_SIZE)), float(rng.uniform(*DISTRACTOR_INTENSITY)),
                       float(rng.uniform(4, width - 4)), float(rng.uniform(4, height - 4)),
                       float(speed * np.cos(heading)), float(speed * np.sin(heading)))  # fmt: skip
        )
    jitter = tuple((float(dx), float(dy)) for dx, dy in np.clip(rng.normal(0, 0.5, (num_frames, 2)), -1.5, 1.5))
    return ClipSpec(
        num_frames=num_frames,
        actors=tuple(actors),
        actions=tuple(actions),
        distractors=tuple(distractors),
        background=float(rng.uniform(0.0, 0.15)),
        noise_std=float(rng.uniform(0.02, 0.06)),
        jitter=jitter,
        noise_seed=int(rng.integers(2**31)),
    )


def distractor_path(d: Distractor, num_frames: int, size: tuple[int, int] = FRAME_SIZE) -> list[tuple[float, float]]:
    """(x, y) of a distractor's centre per frame, bouncing off the frame edges."""
    height, width = size
    x, y, vx, vy = d.x, d.y, d.vx, d.vy
    path = []
    for _ in range(num_frames):
        path.append((x, y))
        x, y = x + vx, y + vy
        if not 2 <= x <= width - 2:
            vx, x = -vx, min(max(x, 2), width - 2)
        if not 2 <= y <= height - 2:
            vy, y = -vy, min(max(y, 2), height - 2)
    return path
