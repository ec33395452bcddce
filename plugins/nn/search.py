"""Batched decoding strategies over the encode / init_state / step contract.

`choose_next_tokens` is the per-step selection rule (greedy or sampling, per row); the engine's
iteration-level loop calls it directly, and `greedy_decode` / `sample_decode` wrap it in a
plain loop. `beam_search` keeps K hypotheses per input, batched over inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmserve.plugins.nn.contract import EncoderDecoder, Memory, select_state


@dataclass
class DecodeResult:
    """One decoded sequence: token ids (no <bos>/<eos>), total log-probability, and the
    attention weights [T, N] that produced each token."""

    tokens: list[int]
    score: float
    attention: torch.Tensor | None = None
    finished: bool = True  # False when max_length cut it off before <eos>


def choose_next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row: argmax where temperature == 0, else sample from the tempered,
    top-k / top-p filtered distribution. Returns tokens [B] and their log-probabilities [B]
    under the model's unmodified distribution (so scores compare across strategies)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
    tokens = log_probs.argmax(dim=-1)
    sampled_rows = (temperature > 0).nonzero(as_tuple=True)[0]
    if sampled_rows.numel():
        scaled = logits[sampled_rows].float() / temperature[sampled_rows].unsqueeze(1)
        scaled = _filter_top_k(scaled, top_k[sampled_rows])
        scaled = _filter_top_p(scaled, top_p[sampled_rows])
        probs = torch.softmax(scaled, dim=-1)
        tokens = tokens.clone()
        tokens[sampled_rows] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return tokens, log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1)


def _filter_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    # top_k <= 0 means "no limit" for that row.
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1))  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # Keep the smallest set of tokens whose probability reaches top_p (always at least one).
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p.unsqueeze(1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def greedy_decode(model: EncoderDecoder, memory: Memory, max_length: int) -> list[DecodeResult]:
    """Greedy decoding of every row of `memory`."""
    zeros = torch.zeros(memory.batch_size, device=memory.values.device)
    return _decode(model, memory, max_length, zeros, zeros.long(), zeros + 1.0, None)


@torch.no_grad()
def sample_decode(
    model: EncoderDecoder,
    memory: Memory,
    max_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[DecodeResult]:
    """Temperature / top-k / top-p sampling of every row of `memory`."""
    batch = memory.batch_size
    device = memory.values.device
    return _decode(
        model,
        memory,
        max_length,
        torch.full((batch,), float(temperature), device=device),
        torch.full((batch,), int(top_k), device=device, dtype=torch.long),
        torch.full((batch,), float(top_p), device=device),
        generator,
    )


def _decode(model, memory, max_length, temperature, top_k, top_p, generator) -> list[DecodeResult]:
    batch = memory.batch_size
    device = memory.values.device
    state = model.init_state(memory)
    prev = torch.full((batch,), model.bos_id, dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    weights: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    done = [False] * batch
    active = torch.arange(batch, device=device)  # rows still decoding
    for _ in range(max_length):
        logits, state, attn = model.step(prev, state, memory.select(active))
        chosen, logp = choose_next_tokens(logits, temperature[active], top_k[active], top_p[active], generator)
        keep = []
        for row, (i, tok, lp) in enumerate(zip(active.tolist(), chosen.tolist(), logp.tolist())):
            scores[i] += lp
            if tok == model.eos_id:
                done[i] = True
                continue
            tokens[i].append(tok)
            weights[i].append(attn[row])
            keep.append(row)
        if not keep:
            break
        keep_idx = torch.tensor(keep, device=device)
        active, prev, state = active[keep_idx], chosen[keep_idx], select_state(state, keep_idx)
    return [
        DecodeResult(tokens[i], scores[i], _stack(weights[i], memory.values.shape[1]), done[i]) for i in range(batch)
    ]


def _stack(rows: list[torch.Tensor], positions: int) -> torch.Tensor:
    return torch.stack(rows).cpu() if rows else torch.zeros(0, positions)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation ((5 + |Y|) / 6) ** alpha; alpha 0 disables it."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: EncoderDecoder, memory: Memory, beam_size: int, max_length: int, alpha: float = 0.0
) -> list[DecodeResult]:
    """Beam search with GNMT length penalty `alpha`, batched over the rows of `memory`.

    A hypothesis ends when it emits <eos>; an input is done once it holds `beam_size` ended
    hypotheses. With beam_size 1 this is exactly greedy decoding.
    """
    assert beam_size >= 1, f"beam_size must be >= 1, got {beam_size}"
    batch, k, device = memory.batch_size, beam_size, memory.values.device
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    mem = memory.select(rows)
    state = model.init_state(mem)
    prev = torch.full((batch * k,), model.bos_id, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch, k, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=device)
    attn_history = torch.zeros(batch * k, 0, mem.values.shape[1], device=device)
    finished: list[list[tuple[float, float, list[int], torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(max_length):
        logits, state, attn = model.step(prev, state, mem)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [B*K, V]
        vocab = log_probs.shape[-1]
        candidates = (beam_scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        top_scores, top_ids = candidates.topk(min(2 * k, k * vocab), dim=1)  # [B, 2K]
        next_scores = torch.full((batch, k), float("-inf"), device=device)
        next_source = torch.zeros(batch, k, dtype=torch.long, device=device)
        next_tokens = torch.full((batch, k), model.eos_id, dtype=torch.long, device=device)
        for b in range(batch):
            if done[b]:
                continue
            alive = 0
            for score, cand in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                if score == float("-inf"):
                    break
                beam, token = divmod(cand, vocab)
                src = b * k + beam
                if token == model.eos_id:
                    length = t + 1
                    finished[b].append(
                        (score / length_penalty(length, alpha), score, history[src].tolist(), attn_history[src].cpu())
                    )
                else:
                    next_scores[b, alive], next_source[b, alive], next_tokens[b, alive] = score, src, token
                    alive += 1
                if alive == k or len(finished[b]) >= k:
                    break
            done[b] = len(finished[b]) >= k or alive == 0
        if all(done):
            break
        source = next_source.view(-1)
        state = select_state(state, source)
        history = torch.cat([history.index_select(0, source), next_tokens.view(-1, 1)], dim=1)
        attn_history = torch.cat([attn_history.index_select(0, source), attn.index_select(0, source).unsqueeze(1)], 1)
        beam_scores = next_scores
        prev = next_tokens.view(-1)
    results = []
    for b in range(batch):
        if finished[b]:
            _, raw, toks, att = max(finished[b], key=lambda f: f[0])
            results.append(DecodeResult(toks, raw, att, True))
        else:  # cut off by max_length: best live hypothesis
            best = int(beam_scores[b].argmax())
            src = b * k + best
            results.append(
                DecodeResult(history[src].tolist(), float(beam_scores[b, best]), attn_history[src].cpu(), False)
            )
    return results
