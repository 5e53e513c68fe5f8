"""detect_anomaly(): a NaN or inf from a forward or a backward raises AnomalyError naming
the op and the line of user code that created it; outside the context nothing is checked."""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

from minivlm import AnomalyError, F, detect_anomaly, tensor

THIS_FILE = os.path.basename(__file__)


def _next_line() -> str:
    """'this_file.py:N' for the line after the caller's."""
    return f"{THIS_FILE}:{inspect.currentframe().f_back.f_lineno + 1}"


def test_nan_from_a_forward_names_the_op_and_the_line_that_called_it(device):
    x = tensor([1.0, -1.0], requires_grad=True, device=device)
    with np.errstate(invalid="ignore"), detect_anomaly(), pytest.raises(AnomalyError) as caught:
        where = _next_line()
        F.log(x)
    message = str(caught.value)
    assert "Log forward output 0 contains NaN" in message
    assert where in message


def test_inf_from_a_backward_names_the_op_and_the_line_of_its_forward(device):
    x = tensor([0.0, 4.0], requires_grad=True, device=device)
    with np.errstate(divide="ignore"), detect_anomaly():
        where = _next_line()
        y = F.sqrt(x)  # sqrt(0) = 0 is fine; its gradient 1 / (2 sqrt(0)) is not
        with pytest.raises(AnomalyError) as caught:
            y.sum().backward()
    message = str(caught.value)
    assert "Sqrt backward gradient for input 0 contains inf" in message
    assert where in message


def test_without_detect_anomaly_nan_and_inf_pass_through_silently(device):
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = F.log(tensor([-1.0], device=device))
        x = tensor([0.0], requires_grad=True, device=device)
        F.sqrt(x).sum().backward()
    assert np.isnan(logs.numpy()).all()
    assert np.isinf(x.grad.tolist()).all()


def test_detect_anomaly_is_off_again_after_it_raised(device):
    x = tensor([-1.0], device=device)
    with np.errstate(invalid="ignore"):
        with pytest.raises(AnomalyError), detect_anomaly():
            F.log(x)
        assert np.isnan(F.log(x).numpy()).all()


def test_finite_values_raise_nothing_inside_detect_anomaly(device):
    x = tensor([1.0, 2.0], requires_grad=True, device=device)
    with detect_anomaly():
        F.softmax(F.log(x) * 1e4, dim=0).sum().backward()
    assert np.isfinite(x.grad.tolist()).all()
