"""CPU kernels in NumPy: blocked ("flash") attention, forward and backward."""

from .flash_attention import flash_attention_backward, flash_attention_forward

__all__ = ["flash_attention_backward", "flash_attention_forward"]
