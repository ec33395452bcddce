"""A task's default beam width: used only when a request names none and can take a beam."""

from __future__ import annotations

import pytest

from mmserve.plugins.speech.task import SpeechTask
from mmserve.server.http.params import parse_params, to_decode_params
from mmserve.server.settings import Settings, TaskSettings


class BeamTask(SpeechTask):
    name, default_beam_size = "beamy", 4


def decode_params_of(raw: dict, settings: Settings | None = None, task=None):
    settings, task = settings or Settings(), task or BeamTask()
    return to_decode_params(parse_params(raw, settings, task.request_options, task), task, settings)


def beam_of(raw: dict, settings: Settings | None = None, task=None) -> int:
    return decode_params_of(raw, settings, task).beam_size


@pytest.mark.parametrize(("raw", "expected"), [
    ({}, 4),  # unset: the task's default
    ({"beam_size": 1}, 1),  # a client that asks for greedy gets greedy
    ({"beam_size": 2}, 2),
    ({"temperature": 0.7}, 1),  # sampling cannot use a beam
    ({"stream": True}, 1),  # nor can a stream (beam search knows its output only at the end)
])  # fmt: skip
def test_the_task_default_applies_only_when_the_request_names_no_beam(raw, expected):
    assert beam_of(raw) == expected


def test_settings_override_the_task_default_within_the_server_cap():
    assert beam_of({}, Settings(tasks={"beamy": TaskSettings(default_beam_size=2)})) == 2
    assert beam_of({}, Settings(max_beam_size=3)) == 3
    with pytest.raises(ValueError):
        TaskSettings(default_beam_size=0)


def test_the_task_length_penalty_applies_unless_the_request_names_one():
    assert decode_params_of({}).length_penalty == BeamTask.default_length_penalty == 0.6
    assert decode_params_of({"length_penalty": 0.0}).length_penalty == 0.0
    assert decode_params_of({"length_penalty": 1.5}).length_penalty == 1.5


def test_tasks_default_to_greedy_and_speech_to_the_beam_its_eval_uses():
    from mmserve.plugins.speech.evaluate import BEAM_SIZE, LENGTH_PENALTY

    class Plain(SpeechTask):
        name, default_beam_size = "plain", 1

    assert beam_of({}, task=Plain()) == 1
    assert (SpeechTask.default_beam_size, SpeechTask.default_length_penalty) == (BEAM_SIZE, LENGTH_PENALTY)
