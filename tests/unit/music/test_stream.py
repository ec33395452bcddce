"""Streaming: music sends one event per time step (its notes), not one per token; other tasks
keep one event per output."""

from __future__ import annotations

from mmserve.plugins.music.task import MusicTask
from mmserve.plugins.music.tokens import piece_to_tokens
from mmserve.plugins.task import Task


def test_music_streams_one_event_per_time_step():
    piece = [[60, 64, 67], [], [62, 65, 69, 74]]
    items = MusicTask().stream_items(model=None)
    events = [event for token in piece_to_tokens(piece) for event in items(token)]
    assert events == [{"step": t, "notes": notes} for t, notes in enumerate(piece)]


def test_each_stream_has_its_own_buffer():
    task = MusicTask()
    first, second = task.stream_items(None), task.stream_items(None)
    assert first(4 + 39) == [] and second(3) == [{"step": 0, "notes": []}]
    assert first(3) == [{"step": 0, "notes": [60]}]


def test_other_tasks_stream_one_event_per_output():
    class Plain(MusicTask):
        stream_items = Task.stream_items

    items = Plain().stream_items(None)
    assert [items(t) for t in (4 + 39, 3)] == [[60], ["|"]]
