"""Hand-written CUDA kernels (kernels/*.cu) behind the same functions as kernels_cpu.

Importing this package does not import CuPy; the first call of a function does, and
compiles the kernel file it needs.
"""

from minivlm.kernels_cuda.adamw import adamw_step
from minivlm.kernels_cuda.attention import flash_attention_backward, flash_attention_forward
from minivlm.kernels_cuda.cross_entropy import cross_entropy_backward, cross_entropy_forward
from minivlm.kernels_cuda.layer_norm import layer_norm_backward, layer_norm_forward

__all__ = [
    "adamw_step",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "flash_attention_backward",
    "flash_attention_forward",
    "layer_norm_backward",
    "layer_norm_forward",
]
