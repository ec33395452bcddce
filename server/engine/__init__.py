"""The per-task engine: encoder micro-batches plus an iteration-level decode loop."""

from mmserve.server.engine.loop import (
    DecodeParams,
    EngineConfig,
    EngineOverloaded,
    EngineStopped,
    ModelFailed,
    TaskEngine,
    TokenCallback,
    UnsupportedDecoding,
)

__all__ = [
    "DecodeParams", "EngineConfig", "EngineOverloaded", "EngineStopped", "ModelFailed", "TaskEngine", "TokenCallback",
    "UnsupportedDecoding",
]
