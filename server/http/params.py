"""Decoding parameters a request may set, bounded by server settings."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmserve.plugins.task import Task
from mmserve.server.engine import DecodeParams
from mmserve.server.http.errors import ApiError
from mmserve.server.settings import Settings


class GenerationParams(BaseModel):
    """Per-request decoding options (query string, form fields or JSON body)."""

    model_config = ConfigDict(extra="forbid")

    beam_size: int = Field(
        1, ge=1, description="Beam width; 1 = greedy or sampling. Unset: the task's default (greedy for most tasks), or 1 when "
        "sampling or streaming"
    )
    max_length: int | None = Field(None, ge=1, description="Most tokens to emit (task default if unset)")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy; > 0 samples")
    top_k: int = Field(0, ge=0, description="Sample from the k most likely tokens; 0 = all")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass")
    length_penalty: float = Field(
        0.0, ge=0.0, le=5.0, description="GNMT length penalty alpha (beam search). Unset: the task's default"
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Sampling seed: the same seed and input give the same output, "
        "whatever other requests share the batch"
    )
    attention: bool = Field(False, description="Include attention weights per output token")
    stream: bool = Field(False, description="Answer with server-sent events, one per token")
    options: dict[str, Any] = Field(
        default_factory=dict, description="The task's own options (its `request_options`), validated"
    )


PARAM_NAMES = tuple(name for name in GenerationParams.model_fields if name != "options")


def parse_params(
    raw: dict[str, Any], settings: Settings, task_options: type[BaseModel] | None = None, task: Task | None = None
) -> GenerationParams:
    """Validate raw (string or typed) values: the decoding parameters every task shares, plus
    the task's own `request_options`; 422 naming each bad or unknown parameter. With `task`,
    max_length is checked against that task's output limit and, when the client leaves it
    unset, taken from the task (`Task.output_length` of its options, else its default)."""
    own = tuple(task_options.model_fields) if task_options is not None else ()
    unknown = sorted(set(raw) - set(PARAM_NAMES) - set(own))
    if unknown:
        raise ApiError(422, f"unknown parameter(s) {unknown}; accepted: {[*PARAM_NAMES, *own]}")
    shared = {k: v for k, v in raw.items() if k in PARAM_NAMES}
    try:
        params = GenerationParams.model_validate(shared)
        if task_options is not None:
            chosen = task_options.model_validate({k: v for k, v in raw.items() if k in own})
            params.options = chosen.model_dump(exclude_unset=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, f"invalid parameter: {problems}") from None
    if params.beam_size > settings.max_beam_size:
        raise ApiError(422, f"beam_size {params.beam_size} is over the limit of {settings.max_beam_size}")
    limit, where = settings.max_output_length, "max_output_length"
    if task is not None:
        limit, where = settings.output_limit(task.name, task.max_output_length), f"task {task.name!r}'s max_output_length"
    if params.max_length is not None and params.max_length > limit:
        raise ApiError(422, f"max_length {params.max_length} is over the limit of {limit} ({where})")
    if task is not None and params.max_length is None:
        options = task.request_options.model_validate(params.options) if task.request_options is not None else None
        params.max_length = task.output_length(options, limit) or min(task.default_max_length, limit)
    if params.beam_size > 1 and params.temperature > 0:
        raise ApiError(422, "beam_size > 1 cannot be combined with sampling (temperature > 0)")
    if params.beam_size > 1 and params.stream:
        raise ApiError(422, "stream=true needs beam_size 1: beam search only knows its output at the end")
    return params


def beam_size_for(params: GenerationParams, task: Task, settings: Settings) -> int:
    """The request's beam width, else (unset, neither sampling nor streaming) the task's default."""
    if "beam_size" in params.model_fields_set or params.temperature > 0 or params.stream:
        return params.beam_size
    return settings.default_beam_size(task.name, task.default_beam_size)


def to_decode_params(params: GenerationParams, task: Task, settings: Settings) -> DecodeParams:
    return DecodeParams(
        max_length=params.max_length or min(task.default_max_length, settings.max_output_length),
        beam_size=beam_size_for(params, task, settings),
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        length_penalty=params.length_penalty if "length_penalty" in params.model_fields_set else task.default_length_penalty,
        keep_attention=params.attention,
        seed=params.seed,
    )
