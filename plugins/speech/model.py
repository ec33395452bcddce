"""Listen, Attend and Spell (Chan et al. 2016) over characters.

Listener: two stride-2 convolutions (4x shorter), a BiLSTM, a pyramidal step that joins
neighbouring frames (8x in all) and a second BiLSTM; optionally residual BiLSTM blocks after
either BiLSTM, which start as the identity so a trained listener can grow deeper. Speller:
the shared attention LSTM decoder with location-aware attention (Chorowski et al. 2015). An optional CTC head on the
4x layer (Kim et al. 2017) helps the listener learn alignments early; at 8x (80 ms a frame)
fast speech has more characters than frames, so CTC sits below the pyramid.

Configuration and modules only; artifacts live in checkpoint.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmserve.plugins.nn.birnn import bidirectional_rnn
from mmserve.plugins.nn.contract import EncoderDecoder, Memory, State
from mmserve.plugins.nn.ctc import KEYS as CTC_KEYS
from mmserve.plugins.nn.ctc import ctc_initial_state, ctc_prefix_step
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.heads import CategoricalHead
from mmserve.plugins.nn.ngram import STATE_KEY as LM_STATE_KEY
from mmserve.plugins.nn.ngram import NGramLM
from mmserve.plugins.nn.vocab import Vocabulary
from mmserve.plugins.speech.features import FeatureConfig

CTC_CANDIDATES = 8  # characters per step that joint decoding scores with CTC (the speller's best)


@dataclass
class ListenerConfig:
    conv_channels: int = 32
    conv_dim: int = 256  # projection of the flattened conv output
    hidden_dim: int = 128  # per direction; memory_dim = 2 * hidden_dim
    dropout: float = 0.2
    ctc: bool = True  # a CTC head on the 4x layer
    # Residual BiLSTM blocks after the 4x and the 8x BiLSTM, each `block_hidden` per direction.
    blocks_4x: int = 0
    blocks_8x: int = 0
    block_hidden: int = 128

    @property
    def memory_dim(self) -> int:
        return 2 * self.hidden_dim


@dataclass
class SpeechConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    decoder: DecoderConfig | None = None  # filled in by ListenAttendSpell
    # Joint CTC/attention decoding (plugins/nn/ctc.py): each step's score is
    # (1 - w) * speller log-probability + w * CTC prefix score. 0: the speller alone.
    ctc_decode_weight: float = 0.0
    # Shallow fusion with a character n-gram LM (plugins/nn/ngram.py, lm.safetensors beside
    # the weights): + lm_weight * log P_LM(character | the word so far). 0: no LM.
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        assert 0.0 <= self.ctc_decode_weight <= 1.0, f"ctc_decode_weight must be in [0, 1], got {self.ctc_decode_weight}"
        assert self.lm_weight >= 0.0, f"lm_weight must be >= 0, got {self.lm_weight}"
        assert self.ctc_decode_weight == 0.0 or self.listener.ctc, "ctc_decode_weight needs the listener's CTC head"

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": self.features.to_dict(),
            "listener": asdict(self.listener),
            "decoder": self.decoder.to_dict() if self.decoder else None,
            "ctc_decode_weight": self.ctc_decode_weight,
            "lm_weight": self.lm_weight,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechConfig:
        decoder = DecoderConfig(**data["decoder"]) if data.get("decoder") else None
        return cls(FeatureConfig(**data["features"]), ListenerConfig(**data["listener"]), decoder,
                   float(data.get("ctc_decode_weight", 0.0)), float(data.get("lm_weight", 0.0)))  # fmt: skip


@dataclass
class SpeechBatch:
    """Collated utterances: features [B, T, F] zero-padded, lengths [B] in frames."""

    features: torch.Tensor
    lengths: torch.Tensor


@dataclass
class CTCMemory(Memory):
    """The speller's memory plus the CTC head's log-probabilities [B, T4, V] and lengths [B]."""

    ctc_log_probs: torch.Tensor | None = None
    ctc_lengths: torch.Tensor | None = None


def conv_length(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after one kernel-3, stride-2, padding-1 convolution."""
    return (lengths - 1) // 2 + 1


def memory_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Memory positions (8x layer) of utterances of `lengths` feature frames."""
    return (conv_length(conv_length(lengths)) + 1) // 2


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, width]


class ResidualBiLSTM(nn.Module):
    """x + W BiLSTM(x) on real frames. W starts at zero, so a block added to a trained
    listener leaves its output unchanged and training picks up where it stopped, with more
    capacity (the gradient reaches W at once, and the BiLSTM as soon as W is not zero)."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        update = self.dropout(self.out(bidirectional_rnn(self.lstm, x, lengths)))
        # Padding stays zero (the pyramid pairs an odd last frame with it, as a lone utterance would).
        return x + update * lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1)


class Listener(nn.Module):
    """features [B, T, F], lengths [B] -> values [B, T/8, 2H], lengths [B], and the 4x layer
    [B, T/4, 2H] with its lengths (for CTC)."""

    def __init__(self, config: ListenerConfig, n_mels: int):
        super().__init__()
        self.config = c = config
        self.conv1 = nn.Conv2d(1, c.conv_channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(c.conv_channels, c.conv_channels, 3, stride=2, padding=1)
        freq = conv_length(conv_length(torch.tensor(n_mels))).item()
        self.project = nn.Linear(c.conv_channels * freq, c.conv_dim)
        self.lstm1 = nn.LSTM(c.conv_dim, c.hidden_dim, batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(4 * c.hidden_dim, c.hidden_dim, batch_first=True, bidirectional=True)
        self.blocks4 = nn.ModuleList(ResidualBiLSTM(c.memory_dim, c.block_hidden, c.dropout) for _ in range(c.blocks_4x))
        self.blocks8 = nn.ModuleList(ResidualBiLSTM(c.memory_dim, c.block_hidden, c.dropout) for _ in range(c.blocks_8x))
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        assert features.dim() == 3, f"expected features [B, T, F], got {tuple(features.shape)}"
        x = features.unsqueeze(1)  # [B, 1, T, F]
        len1 = conv_length(lengths)
        x = F.relu(self.conv1(x))  # [B, C, T/2, F/2]
        # Zero the padded tail so the next convolution sees what a lone utterance would (zeros).
        x = x * lengths_to_mask(len1, x.shape[2])[:, None, :, None]
        len2 = conv_length(len1)
        x = F.relu(self.conv2(x))  # [B, C, T/4, F/4]
        x = x.permute(0, 2, 1, 3).flatten(2)  # [B, T/4, C*F/4]
        x = self.dropout(self.project(x))
        x4 = bidirectional_rnn(self.lstm1, x, len2)  # [B, T4, 2H]
        for block in self.blocks4:
            x4 = block(x4, len2)
        # Pyramid: join frame pairs (an odd last frame is padded with zeros).
        if x4.shape[1] % 2:
            x4p = torch.cat([x4, x4.new_zeros(x4.shape[0], 1, x4.shape[2])], dim=1)
        else:
            x4p = x4
        b, t, d = x4p.shape
        pairs = self.dropout(x4p.reshape(b, t // 2, 2 * d))  # [B, T8, 4H]
        len3 = (len2 + 1) // 2  # = memory_lengths(lengths)
        x8 = bidirectional_rnn(self.lstm2, pairs, len3)  # [B, T8, 2H]
        for block in self.blocks8:
            x8 = block(x8, len3)
        return x8, len3, x4, len2


class ListenAttendSpell(EncoderDecoder):
    def __init__(self, config: SpeechConfig, vocab: Vocabulary):
        super().__init__()
        decoder = config.decoder or DecoderConfig(
            vocab_size=len(vocab), memory_dim=config.listener.memory_dim, attention="location"
        )
        assert decoder.vocab_size == len(vocab), f"decoder vocab_size {decoder.vocab_size} != vocabulary {len(vocab)}"
        assert decoder.memory_dim == config.listener.memory_dim, "decoder memory_dim must be 2 * listener hidden_dim"
        assert decoder.output_kind == "categorical", "characters are token ids: output_kind must be categorical"
        self.config = SpeechConfig(config.features, config.listener, decoder, config.ctc_decode_weight, config.lm_weight)
        self.vocab = vocab
        self.bos_id, self.eos_id, self.pad_id = vocab.bos_id, vocab.eos_id, vocab.pad_id
        self.head = CategoricalHead(vocab.bos_id, vocab.eos_id)
        self.listener = Listener(config.listener, config.features.n_mels)
        self.decoder = AttentionDecoder(decoder)
        # CTC blank = <pad> (id 0), never a transcript character.
        self.ctc = nn.Linear(config.listener.memory_dim, len(vocab)) if config.listener.ctc else None
        self._not_characters = [vocab.pad_id, vocab.bos_id, vocab.eos_id]  # what joint decoding never lets CTC score
        self._ctc_candidates = min(CTC_CANDIDATES, len(vocab) - len(self._not_characters))
        self.lm: NGramLM | None = None  # attached by load_speech_model when the artifact has one

    def attach_lm(self, lm: NGramLM | None) -> None:
        """Use (or drop, with None) a character n-gram LM for shallow fusion."""
        assert lm is None or lm.config.vocab_size == len(self.vocab), "the LM was counted over another vocabulary"
        self.lm = lm.prepare() if lm is not None else None

    @property
    def frames_per_position(self) -> int:
        """Feature frames per memory position (the listener's time reduction)."""
        return 8

    def collate(self, items: list[torch.Tensor]) -> SpeechBatch:
        """Feature tensors [T_i, F] -> SpeechBatch (zero-padded features, lengths)."""
        lengths = torch.tensor([item.shape[0] for item in items], dtype=torch.long)
        features = items[0].new_zeros(len(items), int(lengths.max()), items[0].shape[1])
        for i, item in enumerate(items):
            features[i, : item.shape[0]] = item
        return SpeechBatch(features, lengths)

    def listen(self, batch: SpeechBatch):
        return self.listener(batch.features, batch.lengths.to(batch.features.device))

    @property
    def joint_ctc(self) -> bool:
        return self.ctc is not None and self.config.ctc_decode_weight > 0

    @property
    def fused_lm(self) -> bool:
        return self.lm is not None and self.config.lm_weight > 0

    def encode(self, batch: SpeechBatch) -> Memory:
        values, lengths, x4, len4 = self.listen(batch)
        memory = self.decoder.prepare_memory(values, lengths_to_mask(lengths, values.shape[1]))
        if not self.joint_ctc:
            return memory
        # The CTC log-probabilities ride on the memory only until init_state moves them into
        # the decoder state (what the engine reorders and concatenates).
        return CTCMemory(memory.values, memory.mask, memory.keys, torch.log_softmax(self.ctc(x4), dim=-1), len4)

    def init_state(self, memory: Memory) -> State:
        state = self.decoder.init_state(memory)
        if self.joint_ctc:
            assert isinstance(memory, CTCMemory), "joint CTC decoding needs the memory from this model's encode"
            state.update(ctc_initial_state(memory.ctc_log_probs, memory.ctc_lengths, blank=self.pad_id,
                                           start_id=self.bos_id, width=self._ctc_candidates))  # fmt: skip
        if self.fused_lm:
            state.update(self.lm.initial_state(memory.values.shape[0], memory.values.device))
        return state

    def step(self, prev: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State, torch.Tensor]:
        logits, new_state, attention = self.decoder.step(prev, state, memory)
        if not (self.joint_ctc or self.fused_lm):
            return logits, new_state, attention
        speller = torch.log_softmax(logits.double(), dim=-1)  # [B, V]
        # CTC and the LM score only the speller's best few characters (the rest keep -inf: they
        # were never likely), and the end of the transcript.
        choosable = speller.index_fill(1, torch.tensor(self._not_characters, device=speller.device), float("-inf"))
        candidates = choosable.topk(self._ctc_candidates, dim=1).indices
        weight = self.config.ctc_decode_weight if self.joint_ctc else 0.0
        scores = (1 - weight) * speller.gather(1, candidates)  # [B, K]
        end = (1 - weight) * speller[:, self.eos_id]  # [B]
        if self.joint_ctc:
            ctc, ctc_end, ctc_state = ctc_prefix_step(prev, {k: state[k] for k in CTC_KEYS}, candidates, self.bos_id,
                                                      self.eos_id, blank=self.pad_id)  # fmt: skip
            scores, end = scores + weight * ctc, end + weight * ctc_end
            new_state.update(ctc_state)
        if self.fused_lm:
            lm_state = self.lm.advance({LM_STATE_KEY: state[LM_STATE_KEY]}, prev)  # the start token first
            ends = torch.full_like(candidates[:, :1], self.eos_id)
            lm = self.lm.log_probs(lm_state, torch.cat([candidates, ends], dim=1))  # [B, K + 1]
            scores = scores + self.config.lm_weight * lm[:, :-1]
            end = end + self.config.lm_weight * lm[:, -1]
            new_state.update(lm_state)
        joint = torch.full_like(speller, float("-inf"))
        joint.scatter_(1, candidates, scores)
        joint[:, self.eos_id] = end
        return joint.to(logits.dtype), new_state, attention

    def forward(self, batch: SpeechBatch, inputs: torch.Tensor):
        """Teacher forcing: inputs [B, U] -> logits [B, U, V], attention [B, U, N], and the CTC
        log-probabilities [T4, B, V] with their lengths (None without a CTC head)."""
        values, lengths, x4, len4 = self.listen(batch)
        memory = self.decoder.prepare_memory(values, lengths_to_mask(lengths, values.shape[1]))
        logits, attention = self.decoder.forward_teacher(memory, inputs)
        ctc = None
        if self.ctc is not None:
            ctc = (torch.log_softmax(self.ctc(x4), dim=-1).transpose(0, 1), len4)
        return logits, attention, ctc


def guided_attention_loss(
    attention: torch.Tensor, steps: torch.Tensor, positions: torch.Tensor, width: float = 0.2,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Guided attention (Tachibana et al. 2018): speech is read left to right at a roughly even
    pace, so the weight of output step u on memory position n is penalised by
    1 - exp(-(n/N - u/U)^2 / (2 width^2)), zero on the diagonal. Without it the speller first
    learns a character language model and finds the alignment only after many epochs; with it
    the attention is near-diagonal from the first hundreds of steps.

    attention [B, U, N]; steps [B] (output steps per row, <eos> included); positions [B]: the
    memory positions the speech spans, from `starts` [B] (default 0; > 0 when silence was put
    before it), so the diagonal runs over the speech and not over the padding."""
    b, u, n = attention.shape
    assert steps.shape == (b,) and positions.shape == (b,), "steps and positions must be [B]"
    step_pos = (torch.arange(u, device=attention.device) + 0.5).unsqueeze(0) / steps.unsqueeze(1)  # [B, U]
    mem_pos = torch.arange(n, device=attention.device) + 0.5
    if starts is not None:
        mem_pos = mem_pos.unsqueeze(0) - starts.unsqueeze(1)
    mem_pos = mem_pos.reshape(-1, n) / positions.unsqueeze(1)  # [B, N]
    penalty = 1.0 - torch.exp(-((mem_pos.unsqueeze(1) - step_pos.unsqueeze(2)) ** 2) / (2 * width**2))  # [B, U, N]
    valid = (torch.arange(u, device=attention.device).unsqueeze(0) < steps.unsqueeze(1)).to(attention.dtype)  # [B, U]
    # Padded memory positions already have zero weight; padded steps are masked here.
    per_step = (attention * penalty).sum(dim=2) * valid  # [B, U]
    return per_step.sum() / valid.sum().clamp_min(1.0)


def ctc_loss(model: ListenAttendSpell, batch: SpeechBatch, targets: torch.Tensor) -> torch.Tensor:
    """CTC of the listener's 4x layer alone (no speller): a few times cheaper than speech_loss
    on a CPU, since the speller's per-character loop dominates. Pretrains the listener.
    targets [B, U+1]: <bos> chars <eos> <pad>..."""
    assert model.ctc is not None, "this model has no CTC head"
    _, _, x4, len4 = model.listen(batch)
    log_probs = torch.log_softmax(model.ctc(x4), dim=-1).transpose(0, 1)  # [T4, B, V]
    gold = targets[:, 1:]
    chars = gold.masked_fill(gold == model.eos_id, model.pad_id)  # the characters only
    lengths = (chars != model.pad_id).sum(dim=1)
    return F.ctc_loss(log_probs, chars, len4, lengths, blank=model.pad_id, zero_infinity=True)


def speech_loss(
    model: ListenAttendSpell,
    batch: SpeechBatch,
    targets: torch.Tensor,
    smoothing: float = 0.1,
    ctc_weight: float = 0.3,
    guide_weight: float = 0.0,
    guide_width: float = 0.2,
    speech_frames: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 - w) * label-smoothed cross-entropy + w * CTC (+ guide_weight * guided attention).
    targets [B, U+1]: <bos> chars <eos> <pad>...; speech_frames: where the speech is in each
    clip, (first frame [B], frames [B]), when silence was added around it (the guide follows it)."""
    pad = model.pad_id
    logits, attention, ctc = model(batch, targets[:, :-1])
    gold = targets[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=pad,
                         label_smoothing=smoothing)  # fmt: skip
    parts = {"ce": ce.item()}
    guide = ce.new_zeros(())
    if guide_weight > 0:
        positions, starts = memory_lengths(batch.lengths.to(attention.device)), None
        if speech_frames is not None:
            first, frames = (t.to(attention.device, torch.float32) for t in speech_frames)
            positions, starts = frames / model.frames_per_position, first / model.frames_per_position
        guide = guided_attention_loss(attention, (gold != pad).sum(dim=1), positions, guide_width, starts)
        parts["guide"] = guide.item()
    if ctc is None or ctc_weight <= 0:
        return ce + guide_weight * guide, parts
    log_probs, input_lengths = ctc
    chars = gold.masked_fill(gold == model.eos_id, pad)  # CTC targets: the characters only
    target_lengths = (chars != pad).sum(dim=1)
    ctc = F.ctc_loss(log_probs, chars, input_lengths, target_lengths, blank=pad, zero_infinity=True)
    parts["ctc"] = ctc.item()
    return (1 - ctc_weight) * ce + ctc_weight * ctc + guide_weight * guide, parts
