"""Held-out scores: the model's NLL and MAE, and the MAE of two baselines on the same series."""

from __future__ import annotations

import numpy as np
import torch

from mmserve.plugins.nn.search import DecodeParams, decode
from mmserve_forecast.model import ForecastModel


def naive_last(history: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the last observed value: [B, N] -> [B, H]."""
    return np.repeat(history[:, -1:], horizon, axis=1)


def seasonal_period(history: np.ndarray, min_lag: int = 2) -> np.ndarray:
    """Per row, the lag (in steps) with the highest autocorrelation of the linearly detrended
    history, searched over min_lag..N/2: the period a seasonal-naive forecaster would use."""
    count, length = history.shape
    t = np.arange(length)
    periods = np.empty(count, dtype=np.int64)
    for i, row in enumerate(history.astype(np.float64)):
        detrended = row - np.polyval(np.polyfit(t, row, 1), t)
        lags = range(min_lag, length // 2 + 1)
        scores = [np.dot(detrended[:-lag], detrended[lag:]) / (length - lag) for lag in lags]
        periods[i] = min_lag + int(np.argmax(scores))
    return periods


def seasonal_naive(history: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the last estimated period: value h ahead = the value one (or more) periods back."""
    length = history.shape[1]
    out = np.empty((history.shape[0], horizon), dtype=history.dtype)
    for i, period in enumerate(seasonal_period(history)):
        for h in range(horizon):
            out[i, h] = history[i, length - period + (h % period)]
    return out


@torch.no_grad()
def model_forecast(
    model: ForecastModel,
    history: np.ndarray,
    horizon: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Decode [B, N] histories to [B, H] paths with the serving engine's decode loop."""
    batch = model.collate([torch.from_numpy(row) for row in history])
    memory = model.encode(batch)
    results = decode(model, memory, DecodeParams(max_length=horizon, temperature=temperature), generator)
    return np.array([[item[0] for item in r.tokens] for r in results], dtype=np.float32)


@torch.no_grad()
def nll_per_step(model: ForecastModel, history: np.ndarray, future: np.ndarray) -> float:
    """Mean negative log-likelihood per forecast step of the true future, teacher-forced
    (the exact NLL of the autoregressive model), in units normalised by each history's scale."""
    batch = model.collate([torch.from_numpy(row) for row in history])
    log_prob = model.teacher_forced_log_prob(batch, torch.from_numpy(future))  # [B], normalised
    return float(-log_prob.mean() / future.shape[1])


def mae(forecast: np.ndarray, future: np.ndarray) -> float:
    return float(np.abs(forecast - future).mean())


def evaluate(model: ForecastModel, history: np.ndarray, future: np.ndarray) -> dict[str, float]:
    """Scores on held-out series: history [B, N], future [B, H] (series units)."""
    model.eval()
    horizon = future.shape[1]
    return {
        "series": float(history.shape[0]),
        "history": float(history.shape[1]),
        "horizon": float(horizon),
        "nll_per_step": nll_per_step(model, history, future),
        "mae_model": mae(model_forecast(model, history, horizon), future),
        "mae_naive_last": mae(naive_last(history, horizon), future),
        "mae_seasonal_naive": mae(seasonal_naive(history, horizon), future),
    }
