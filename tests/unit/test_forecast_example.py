"""The forecast example plugin: Gaussian head model, bundled weights, input parsing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mmserve_forecast.data import make_series
from mmserve_forecast.metrics import mae, model_forecast, naive_last, seasonal_naive
from mmserve_forecast.model import ForecastConfig, ForecastMemory, ForecastModel
from mmserve_forecast.preprocess import MAX_HISTORY, MIN_HISTORY, parse_series
from mmserve_forecast.task import ForecastTask

from mmserve.plugins.errors import InputError, UnsupportedMediaType
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.decoding import DecodeResult

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained() -> ForecastModel:
    task = ForecastTask()
    return task.load_model(task.bundled_artifacts(), torch.device("cpu"))


def fresh(seed: int, count: int, history: int = 64, horizon: int = 24) -> tuple[np.ndarray, np.ndarray]:
    series = make_series(np.random.default_rng(seed), count, history + horizon)
    return series[:, :history], series[:, history:]


def test_gaussian_decoder_outputs_mean_and_log_variance() -> None:
    decoder = AttentionDecoder(DecoderConfig(vocab_size=3, memory_dim=8, hidden_dim=16, output_kind="gaussian"))
    memory = decoder.prepare_memory(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    output, _, attention = decoder.step(torch.randn(2, 3), decoder.init_state(memory), memory)
    assert output.shape == (2, 6) and attention.shape == (2, 5)


def test_model_shapes_and_memory_rows() -> None:
    model = ForecastModel(ForecastConfig(encoder_hidden=8, decoder_hidden=16)).eval()
    batch = model.collate([torch.randn(20), torch.randn(30)])
    memory = model.encode(batch)
    assert isinstance(memory, ForecastMemory)
    assert memory.values.shape == (2, 30, 16) and memory.stats.shape == (2, 3)
    assert memory.mask.sum(1).tolist() == [20, 30]
    assert memory.stats[0, 2] == batch.values[0, 19], "stats carry the last observed value"
    picked = memory.select(torch.tensor([1]))
    assert isinstance(picked, ForecastMemory) and torch.equal(picked.stats, memory.stats[1:])
    state = model.init_state(memory)
    output, state, attention = model.step(model.head.start(2, "cpu"), state, memory)
    assert output.shape == (2, 2) and attention.shape == (2, 30)
    assert torch.allclose(attention.sum(1), torch.ones(2)) and attention[0, 20:].abs().max() == 0


def test_first_step_starts_from_the_last_observed_value_not_prev() -> None:
    model = ForecastModel(ForecastConfig(encoder_hidden=8, decoder_hidden=16)).eval()
    memory = model.encode(model.collate([torch.randn(24)]))
    state = model.init_state(memory)
    first_a, state_a, _ = model.step(torch.zeros(1, 1), state, memory)
    first_b, _, _ = model.step(torch.full((1, 1), 100.0), state, memory)
    assert torch.equal(first_a, first_b), "the first step ignores head.start's prev"
    second_a, _, _ = model.step(torch.zeros(1, 1), state_a, memory)
    second_b, _, _ = model.step(torch.full((1, 1), 100.0), state_a, memory)
    assert not torch.allclose(second_a, second_b), "later steps read prev"


def test_forecast_alone_equals_forecast_in_a_padded_batch(trained) -> None:
    short, long = fresh(1, 1, history=40)[0][0], fresh(2, 1, history=90)[0][0]
    memory_alone = trained.encode(trained.collate([torch.from_numpy(short)]))
    memory_batch = trained.encode(trained.collate([torch.from_numpy(short), torch.from_numpy(long)]))
    from mmserve.plugins.nn.search import greedy_decode

    alone = greedy_decode(trained, memory_alone, 12)[0].tokens
    batched = greedy_decode(trained, memory_batch, 12)[0].tokens
    assert np.allclose(alone, batched, atol=1e-4)


def test_forecast_follows_a_shift_and_rescale_of_the_series(trained) -> None:
    history, _ = fresh(3, 4)
    base = model_forecast(trained, history, 12)
    moved = model_forecast(trained, history * 1000.0 + 5.0, 12)
    assert np.allclose(moved, base * 1000.0 + 5.0, rtol=1e-3, atol=1e-2 * 1000)


def test_bundled_model_beats_the_naive_baselines_on_fresh_series(trained) -> None:
    history, future = fresh(20_261_126, 50)
    model_mae = mae(model_forecast(trained, history, 24), future)
    naive_mae = mae(naive_last(history, 24), future)
    assert model_mae < naive_mae, f"model MAE {model_mae:.3f} vs naive last value {naive_mae:.3f}"


def test_seasonal_naive_repeats_the_estimated_period() -> None:
    t = np.arange(60, dtype=np.float32)
    history = np.stack([np.sin(2 * np.pi * t / 10), np.sin(2 * np.pi * t / 15)])
    forecast = seasonal_naive(history, 20)
    assert np.allclose(forecast[0], history[0, 50:60].tolist() * 2, atol=1e-6)
    assert np.allclose(forecast[1], history[1, 45:60].tolist() + history[1, 45:50].tolist(), atol=1e-6)


def test_temperature_zero_is_the_deterministic_mean_path(trained) -> None:
    history, _ = fresh(4, 3)
    first, second = model_forecast(trained, history, 16), model_forecast(trained, history, 16)
    assert np.array_equal(first, second)
    memory = trained.encode(trained.collate([torch.from_numpy(row) for row in history]))
    state = trained.init_state(memory)
    output, _, _ = trained.step(trained.head.start(3, "cpu"), state, memory)
    assert np.allclose(first[:, 0], output[:, 0].detach().numpy()), "the first value is the head's mean"


def test_sampling_with_a_seed_differs_from_the_mean_and_repeats(trained) -> None:
    history, _ = fresh(5, 3)
    mean = model_forecast(trained, history, 16)
    sample = model_forecast(trained, history, 16, 1.0, torch.Generator().manual_seed(7))
    again = model_forecast(trained, history, 16, 1.0, torch.Generator().manual_seed(7))
    assert np.array_equal(sample, again)
    assert not np.allclose(sample, mean)
    assert np.isfinite(sample).all()


def test_parse_json_and_csv_bodies() -> None:
    values = [float(i) / 3 for i in range(MIN_HISTORY)]
    from_json = parse_series(json.dumps(values).encode(), "application/json")
    from_csv = parse_series(("value\n" + "\n".join(map(str, values))).encode(), "text/csv; charset=utf-8")
    from_line = parse_series(", ".join(map(str, values)).encode(), None)
    from_sniffed_json = parse_series(json.dumps(values).encode(), None)
    for parsed in (from_json, from_csv, from_line, from_sniffed_json):
        assert torch.allclose(parsed, torch.tensor(values))


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "text/csv", "empty"),
        (b"1,2,abc," + b"1," * 20, "text/csv", "not a number"),
        (b"1,2,3", "text/csv", f"at least {MIN_HISTORY}"),
        (",".join(["1"] * (MAX_HISTORY + 1)).encode(), "text/csv", f"at most {MAX_HISTORY}"),
        (b"nan," + b"1," * 20, "text/csv", "finite"),
        (json.dumps([1.0] * 20 + [math.inf]).encode(), "application/json", "finite"),
        (json.dumps([1] * 20 + [True]).encode(), "application/json", "not a number"),
        (json.dumps({"values": [1] * 20}).encode(), "application/json", "array"),
        (b"[1, 2,", "application/json", "not valid JSON"),
        (json.dumps([1] * 20 + [1e12]).encode(), "application/json", "rescale"),
        (b"\xff\xfe1,2", "text/csv", "UTF-8"),
    ],
)
def test_bad_input_is_a_clear_input_error(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_series(body, content_type)


def test_other_media_types_are_refused() -> None:
    with pytest.raises(UnsupportedMediaType):
        parse_series(b"1,2,3", "image/png")


def test_postprocess_and_stream_items_are_forecast_values(trained) -> None:
    task = ForecastTask()
    result = DecodeResult(tokens=[[1.5], [2.5]], score=-3.0)
    assert task.postprocess(result, trained, False) == {"forecast": [1.5, 2.5], "score": -3.0, "horizon": 2}
    assert task.token_text([1.5], trained) == 1.5
