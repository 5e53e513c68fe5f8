"""The vision-language model: config, vision encoder, text decoder, decoding cache."""

from .config import FUSIONS, NORMS, VLMConfig, tiny_config
from .kv_cache import BlockCache, DecodeCache
from .vision import VisionEncoder, patchify
from .vlm import VLM, CrossModalAttention, VLMBlock

__all__ = [
    "VLMConfig",
    "FUSIONS",
    "NORMS",
    "tiny_config",
    "VisionEncoder",
    "patchify",
    "CrossModalAttention",
    "VLMBlock",
    "VLM",
    "DecodeCache",
    "BlockCache",
]
