"""The ops, named and called as in torch.nn.functional (imported as `minivlm.F`).

Each op is a Function subclass in the file of its family, forward and backward side
by side; the lower-case functions here are what user code calls.
"""

from . import tensor_methods  # noqa: F401  (binds +, -, @, [], .sum(), ... to Tensor)
from .arithmetic import add, div, mul, neg, pow, sub
from .attention import scaled_dot_product_attention
from .cast import astype
from .dropout import dropout
from .embedding import embedding
from .loss import cross_entropy
from .matmul import linear, matmul
from .normalization import add_layer_norm, layer_norm
from .pointwise import exp, gelu, log, relu, sqrt, tanh
from .reduction import max, mean, sum
from .shape import concat, getitem, permute, reshape, stack, transpose
from .softmax import log_softmax, softmax

cat = concat  # torch's name for concat

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "tanh", "relu", "gelu",
    "sum", "mean", "max", "reshape", "transpose", "permute", "getitem", "concat", "cat", "stack",
    "matmul", "linear", "embedding", "dropout", "layer_norm", "add_layer_norm", "softmax",
    "log_softmax", "scaled_dot_product_attention", "cross_entropy", "astype",
]
