"""The checks behind `minivlm gradcheck` and `minivlm explain`: each op's case, the tiny
VLM's loss-gradient case, the tables that run them, and the explain page."""

from .model_cases import model_gradcheck, tiny_batch, tiny_model
from .op_cases import CASES, OpCase, select

__all__ = ["CASES", "OpCase", "model_gradcheck", "select", "tiny_batch", "tiny_model"]
