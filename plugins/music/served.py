"""The served music model: the continuation model and the harmonisation model behind one
encode / init_state / step, so requests of both modes share the engine's decode batches.

Each row belongs to one model (its *route*: "quarter" continues, "harmony" harmonises). The
memory packs every model's channels side by side, plus the route in the last channel; the
state holds every model's entries under "<route>." keys (zeros on the other routes' rows).
Both serial models share one token vocabulary and head, so their outputs mix freely; each
step runs each model on its own rows only.

Memory [B, N, sum(D_r + 1) + 1]: for each route r, its model's memory values (with its step
budget channel), then the route index. Keys [B, N, sum(A_r)] likewise (all models or none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmserve.plugins.music.model import MusicBatch, MusicModel
from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State

ROUTES = ("quarter", "harmony")  # what a model was trained for = the route of its rows


@dataclass
class RoutedBatch:
    """One MusicBatch per route present, with the rows of the whole batch it holds."""

    size: int
    parts: dict[str, tuple[torch.Tensor, MusicBatch]]  # route -> (row index [R], its batch)


class ServedMusic(EncoderDecoder):
    """Routes each row to the model trained for its mode; see the module docstring."""

    def __init__(self, models: dict[str, MusicModel]):
        super().__init__()
        assert models and set(models) <= set(ROUTES), f"routes must be among {ROUTES}, got {sorted(models)}"
        for route, model in models.items():
            assert model.config.head == "serial", f"the served {route} model must have the serial note head"
            assert model.trained_for == route, f"the {route} model was trained for {model.trained_for}"
        self.routes = [r for r in ROUTES if r in models]
        self.models = torch.nn.ModuleDict({r: models[r] for r in self.routes})
        self.head = models[self.routes[0]].head  # every serial model: CategoricalHead(BOS, EOS)
        self.value_width = {r: m.config.encoder.memory_dim + 1 for r, m in models.items()}  # + budget channel
        self.key_width = {r: m.config.decoder.attn_dim for r, m in models.items()}

    @property
    def trained_for(self) -> str:
        """The default route (continuation when served)."""
        return self.routes[0]

    def serves(self, route: str) -> bool:
        return route in self.models

    def model(self, route: str) -> MusicModel:
        return self.models[route]  # type: ignore[return-value]

    # ---- the contract -------------------------------------------------------------------
    def collate(self, items: list[Any]) -> RoutedBatch:  # type: ignore[override]
        """items: (roll [P, 88], steps) for the default route or (roll, steps, route)."""
        by_route: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            route = item[2] if len(item) > 2 else self.trained_for
            assert route in self.models, f"no {route} model is served"
            by_route.setdefault(route, []).append(i)
        parts = {}
        for route, rows in by_route.items():
            batch = self.model(route).collate([tuple(items[i][:2]) for i in rows])
            parts[route] = (torch.tensor(rows, dtype=torch.long), batch)
        return RoutedBatch(len(items), parts)

    def encode(self, batch: RoutedBatch) -> Memory:  # type: ignore[override]
        encoded = {r: (rows, self.model(r).encode(part)) for r, (rows, part) in batch.parts.items()}
        any_memory = next(iter(encoded.values()))[1]
        positions = max(m.values.shape[1] for _, m in encoded.values())
        device, dtype = any_memory.values.device, any_memory.values.dtype
        values = torch.zeros(batch.size, positions, sum(self.value_width.values()) + 1, device=device, dtype=dtype)
        mask = torch.zeros(batch.size, positions, dtype=torch.bool, device=device)
        with_keys = any_memory.keys is not None
        keys = torch.zeros(batch.size, positions, sum(self.key_width.values()), device=device, dtype=dtype) if with_keys else None
        for route, (rows, memory) in encoded.items():
            rows = rows.to(device)
            n = memory.values.shape[1]
            values[rows, :n, self._value_slice(route)] = memory.values
            values[rows, :, -1] = float(self.routes.index(route))
            mask[rows, :n] = memory.mask
            if keys is not None:
                assert memory.keys is not None, "every served model must precompute keys, or none"
                keys[rows, :n, self._key_slice(route)] = memory.keys
        return Memory(values=values, mask=mask, keys=keys)

    def init_state(self, memory: Memory) -> State:
        state: State = {}
        for route in self.routes:  # every route's entries, so states of any two batches concatenate
            rows = self._rows(memory, route)
            part = self.model(route).init_state(self._sub_memory(memory, route, rows))
            for key, value in part.items():
                full = value.new_zeros(memory.batch_size, *value.shape[1:])
                state[f"{route}.{key}"] = full.index_copy(0, rows, value)
        return state

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        batch, positions = memory.batch_size, memory.mask.shape[1]
        logits = attention = None
        new_state: State = dict(state)
        for route in self.routes:
            rows = self._rows(memory, route)
            if rows.numel() == 0:
                continue
            whole = rows.numel() == batch  # one route in the batch (the usual case): no gathers
            prefix = f"{route}."
            own = {k[len(prefix):]: (v if whole else v.index_select(0, rows)) for k, v in state.items() if k.startswith(prefix)}
            out, own_next, weights = self.model(route).step(prev if whole else prev[rows], own, self._sub_memory(memory, route, rows))
            if whole:
                logits, attention = out, weights
            else:
                if logits is None:
                    logits = out.new_full((batch, out.shape[1]), float("-inf"))
                    attention = weights.new_zeros(batch, positions)
                logits = logits.index_copy(0, rows, out)
                attention = attention.index_copy(0, rows, weights[:, :positions])
            for key, value in own_next.items():
                new_state[prefix + key] = value if whole else state[prefix + key].index_copy(0, rows, value)
        assert logits is not None and attention is not None, "a step needs at least one row"
        return logits, new_state, attention

    # ---- packing ------------------------------------------------------------------------
    def _rows(self, memory: Memory, route: str) -> torch.Tensor:
        return (memory.values[:, 0, -1] == float(self.routes.index(route))).nonzero(as_tuple=True)[0]

    def _value_slice(self, route: str) -> slice:
        start = sum(self.value_width[r] for r in self.routes[: self.routes.index(route)])
        return slice(start, start + self.value_width[route])

    def _key_slice(self, route: str) -> slice:
        start = sum(self.key_width[r] for r in self.routes[: self.routes.index(route)])
        return slice(start, start + self.key_width[route])

    def _sub_memory(self, memory: Memory, route: str, rows: torch.Tensor) -> Memory:
        whole = rows.numel() == memory.batch_size
        values = memory.values[..., self._value_slice(route)]
        keys = None if memory.keys is None else memory.keys[..., self._key_slice(route)]
        if whole:
            return Memory(values=values, mask=memory.mask, keys=keys)
        return Memory(
            values=values.index_select(0, rows),
            mask=memory.mask.index_select(0, rows),
            keys=None if keys is None else keys.index_select(0, rows),
        )
