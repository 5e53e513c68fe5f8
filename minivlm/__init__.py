"""minivlm: a vision-language model on a hand-written NumPy/CuPy autograd engine."""

from . import functional
from . import functional as F
from .autograd import AnomalyError, Function, Tensor, detect_anomaly, enable_grad, no_grad, tensor
from .backend import DeviceError, cuda_available
from .gradcheck import GradcheckError, gradcheck
from .random import manual_seed

__version__ = "0.1.0"

__all__ = [
    "F", "functional", "Tensor", "Function", "tensor", "no_grad", "enable_grad", "detect_anomaly",
    "AnomalyError", "DeviceError", "cuda_available", "gradcheck", "GradcheckError", "manual_seed",
]
