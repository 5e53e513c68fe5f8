"""The vision-language model: config, vision encoder, text decoder, decoding cache, loss."""

from .config import FUSIONS, NORMS, VLMConfig, tiny_config
from .kv_cache import BlockCache, DecodeCache
from .loss import next_token_loss
from .vision import VisionEncoder, patchify
from .vlm import VLM, VLMBlock

__all__ = [
    "VLMConfig",
    "FUSIONS",
    "NORMS",
    "tiny_config",
    "VisionEncoder",
    "patchify",
    "VLMBlock",
    "VLM",
    "next_token_loss",
    "DecodeCache",
    "BlockCache",
]
