"""Shared neural blocks: attention, the attention RNN decoder, decoding strategies.

Every built-in plugin builds its model from these pieces, so the server can batch and decode
any task with the same code.
"""

from mmserve.plugins.nn.attention import AdditiveAttention, MultiplicativeAttention, build_attention
from mmserve.plugins.nn.contract import EncoderDecoder, Memory
from mmserve.plugins.nn.decoder import AttentionDecoder, DecoderConfig
from mmserve.plugins.nn.search import DecodeResult, beam_search, choose_next_tokens, greedy_decode, sample_decode
from mmserve.plugins.nn.vocab import Vocabulary

__all__ = [
    "AdditiveAttention",
    "AttentionDecoder",
    "DecodeResult",
    "DecoderConfig",
    "EncoderDecoder",
    "Memory",
    "MultiplicativeAttention",
    "Vocabulary",
    "beam_search",
    "build_attention",
    "choose_next_tokens",
    "greedy_decode",
    "sample_decode",
]
