"""minivlm: a vision-language model on a hand-written NumPy/CuPy autograd engine."""

import os

# OpenBLAS's idle threads spin for 2^28 cycles (about 0.1 s) after each product before
# they sleep. On a 2-core machine a spinning thread holds the core that our own worker
# threads want next (the fused attention kernel runs its heads on a thread pool with BLAS
# at one thread): its backward took 1.5x as long right after a Linear. 2^18 cycles
# (about 0.1 ms) keeps back-to-back products warm and hands the core back. OpenBLAS reads
# this when it loads, so it only takes effect where minivlm is imported before NumPy (the
# CLI, the benchmarks); a value already in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")

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
