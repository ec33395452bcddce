"""Output length: a music request's `length` in steps or beats becomes its token budget, up to
the task's output limit (a setting); past it a 4xx names the limit. Other tasks keep their
default, capped by their own limit."""

from __future__ import annotations

import pytest
import torch

from mmserve.plugins.errors import InputError
from mmserve.plugins.music.preprocess import MAX_GENERATED_STEPS, MusicOptions
from mmserve.plugins.music.served import ServedMusic
from mmserve.plugins.music.task import MusicTask
from mmserve.plugins.music.tokens import MAX_NOTES_PER_STEP, STEP_ID, TOKENS_PER_STEP, steps_to_tokens
from mmserve.plugins.task import InputLimits
from mmserve.server.http.errors import ApiError
from mmserve.server.http.params import parse_params, to_decode_params
from mmserve.server.settings import Settings, TaskSettings

TASK = MusicTask()


def _max_length(raw: dict, settings: Settings | None = None) -> int:
    settings = settings or Settings()
    params = parse_params(raw, settings, TASK.request_options, TASK)
    return to_decode_params(params, TASK, settings).max_length


def test_length_in_steps_and_beats_becomes_a_token_budget_past_the_server_wide_cap():
    assert Settings().max_output_length < steps_to_tokens(200)  # the case this fixes
    assert _max_length({"length": 200}) == steps_to_tokens(200)
    assert _max_length({"length": 200, "length_unit": "beats"}) == steps_to_tokens(200)  # 1 step per beat
    assert _max_length({}) == steps_to_tokens(16)  # the default length
    assert _max_length({"length": MAX_GENERATED_STEPS}) == steps_to_tokens(MAX_GENERATED_STEPS)


def test_length_over_the_task_limit_is_a_422_naming_it():
    with pytest.raises(InputError) as error:
        _max_length({"length": MAX_GENERATED_STEPS + 1})
    assert error.value.status_code == 422
    assert f"limit of {MAX_GENERATED_STEPS} steps" in str(error.value)


def test_the_limit_is_a_per_task_setting():
    settings = Settings(tasks={"music": TaskSettings(max_output_length=steps_to_tokens(40))})
    assert _max_length({"length": 40}, settings) == steps_to_tokens(40)
    with pytest.raises(InputError, match="limit of 40 steps"):
        _max_length({"length": 41}, settings)
    with pytest.raises(ApiError, match="max_output_length") as error:
        _max_length({"max_length": steps_to_tokens(40) + 1}, settings)
    assert error.value.status_code == 422


def test_a_task_without_its_own_length_keeps_its_default_under_its_limit():
    class Speechish(MusicTask):
        name, default_max_length, max_output_length = "speechish", 400, None

        def output_length(self, options, limit):
            return None

    task = Speechish()
    for settings, expected in ((Settings(), 128), (Settings(tasks={"speechish": TaskSettings(max_output_length=1000)}), 400)):
        params = parse_params({}, settings, task.request_options, task)
        assert to_decode_params(params, task, settings).max_length == expected


def test_a_melody_longer_than_the_limit_is_refused_in_steps(serial_model):
    serial_model.trained_for = "harmony"
    served = ServedMusic({"harmony": serial_model})
    limits = InputLimits(max_output_length=steps_to_tokens(8))
    melody = b"[[60], [62], [64], [65], [67], [69], [71], [72], [74]]"
    with pytest.raises(InputError, match="limit of 8 steps") as error:
        TASK.preprocess(melody, "application/json", served, limits, options=MusicOptions(mode="harmonize"))
    assert error.value.status_code == 413


def test_a_generated_step_closes_after_the_most_notes_a_step_may_hold(serial_model):
    # Feed MAX_NOTES_PER_STEP pitches into one step: then only <step> may follow (or <eos>).
    memory = serial_model.encode(serial_model.collate([(torch.zeros(0, 88), 0)]))
    state = serial_model.init_state(memory)
    logits, state, _ = serial_model.step(torch.tensor([1]), state, memory)  # <bos>
    for pitch_token in range(4 + 10, 4 + 10 + MAX_NOTES_PER_STEP):
        assert torch.isfinite(logits[0, pitch_token])
        logits, state, _ = serial_model.step(torch.tensor([pitch_token]), state, memory)
    finite = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert finite == [STEP_ID]
    assert TOKENS_PER_STEP == MAX_NOTES_PER_STEP + 1
