"""Layers and models built from minivlm's ops: Module, Parameter and the usual layers,
named and initialised as in torch.nn so that weights move between the two."""

from . import init
from .attention import KVCache, MultiHeadAttention, attend, merge_heads, split_heads
from .containers import ModuleList, Sequential
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, ReLU
from .module import (
    LoadResult,
    Module,
    Parameter,
    StateDictError,
    functional_call,
    swapped_parameters,
)
from .transformer import TransformerEncoderLayer

__all__ = [
    "Module",
    "Parameter",
    "StateDictError",
    "LoadResult",
    "functional_call",
    "swapped_parameters",
    "ModuleList",
    "Sequential",
    "Linear",
    "LayerNorm",
    "Embedding",
    "Dropout",
    "ReLU",
    "GELU",
    "MultiHeadAttention",
    "KVCache",
    "attend",
    "split_heads",
    "merge_heads",
    "TransformerEncoderLayer",
    "init",
]
