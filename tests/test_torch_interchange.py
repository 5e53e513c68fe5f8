"""Our layers and model against the same ones built in PyTorch, weights loaded both ways:
outputs and every parameter's gradient agree in float64 (eval mode, dropout off). The
model's twin is minivlm.bench.torch_twin, the one `minivlm bench train` times."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional

from minivlm import functional as F  # noqa: E402
from minivlm import nn, random, tensor  # noqa: E402
from minivlm.bench.torch_twin import TorchVLM, twin_of  # noqa: E402
from minivlm.models import VLM, VLMConfig  # noqa: E402

RTOL = 1e-8


# -- helpers ---------------------------------------------------------------------------
def assert_close(ours, theirs, what, floor=1e-12):
    """max |ours - theirs| <= RTOL * max(max |theirs|, floor)."""
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    scale = max(np.abs(theirs).max(), floor)
    error = np.abs(ours - theirs).max() / scale
    assert error < RTOL, (
        f"{what}: max |ours - torch| / {scale:.3e} = {error:.3e} (allowed {RTOL:g})"
    )


def to_torch(state):
    return {name: torch.from_numpy(np.array(value)) for name, value in state.items()}


def to_ours(module):
    return {name: value.detach().numpy() for name, value in module.state_dict().items()}


def compare_gradients(ours: nn.Module, theirs, prefix=""):
    """Every gradient, relative to its own size or, for gradients that are zero in exact
    arithmetic (the key bias under softmax), to 1e-3 of the model's largest gradient."""
    torch_params = dict(theirs.named_parameters())
    names = [name for name, _ in ours.named_parameters()]
    assert sorted(names) == sorted(torch_params), "parameter names differ from PyTorch's"
    largest = max(float(p.grad.abs().max()) for p in torch_params.values())
    for name, param in ours.named_parameters():
        assert_close(
            param.grad, torch_params[name].grad, f"{prefix}gradient of {name}", 1e-3 * largest
        )


def tiny(fusion="cross", norm="post", token_lags=0):
    return VLMConfig(
        image_size=8,
        patch_size=4,
        d_model=8,
        n_heads=2,
        n_encoder_layers=2,
        n_blocks=2,
        vocab_size=13,
        encoder_dropout=0.1,
        max_len=6,
        fusion=fusion,
        norm=norm,
        token_lags=token_lags,
    )


def gates_away_from_zero(model):
    for name, param in model.named_parameters():
        if name.endswith("_gate"):
            param.data[...] = 0.6


def run_both(ours, theirs, images, tokens, targets):
    """Loss forward and backward in both; returns the two logits."""
    logits = ours(images, tokens)
    F.cross_entropy(F.reshape(logits, (-1, logits.shape[-1])), targets.reshape(-1)).backward()
    t_logits = theirs(torch.from_numpy(images), torch.from_numpy(tokens))
    TF.cross_entropy(
        t_logits.reshape(-1, t_logits.shape[-1]), torch.from_numpy(targets).reshape(-1)
    ).backward()
    return logits, t_logits


# -- tests -----------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_pytorch_outputs_and_gradients(norm_first):
    random.manual_seed(0)
    ours = (
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, norm_first=norm_first)
        .to(dtype=np.float64)
        .eval()
    )
    theirs = tnn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.1, batch_first=True, norm_first=norm_first
    )
    theirs = theirs.double().eval()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    theirs.load_state_dict(to_torch(ours.state_dict()))
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    upstream = np.random.default_rng(2).standard_normal((2, 5, 8))
    out = ours(tensor(x, dtype=np.float64))
    out.backward(upstream)
    t_out = theirs(torch.from_numpy(x))
    t_out.backward(torch.from_numpy(upstream))
    assert_close(out.data, t_out, "encoder layer output")
    compare_gradients(ours, theirs, "encoder layer ")


def test_multi_head_attention_matches_pytorch_with_padding_and_weights():
    random.manual_seed(0)
    ours = nn.MultiHeadAttention(8, 2).to(dtype=np.float64)
    theirs = tnn.MultiheadAttention(8, 2, batch_first=True).double()
    theirs.load_state_dict(to_torch(ours.state_dict()))
    rng = np.random.default_rng(3)
    q, kv = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 5, 8))
    lengths = np.array([5, 2])
    out, weights = ours(
        tensor(q, dtype=np.float64),
        tensor(kv, dtype=np.float64),
        key_lengths=lengths,
        need_weights=True,
    )
    t_out, t_weights = theirs(
        torch.from_numpy(q),
        torch.from_numpy(kv),
        torch.from_numpy(kv),
        key_padding_mask=torch.arange(5)[None, :] >= torch.from_numpy(lengths)[:, None],
        average_attn_weights=False,
    )
    assert_close(out.data, t_out, "attention output")
    assert_close(weights.data, t_weights, "attention weights")


@pytest.mark.parametrize(
    "fusion,norm,lags",
    [
        ("cross", "post", 0),
        ("gated", "post", 0),
        ("prefix", "post", 0),
        ("cross", "pre", 0),
        ("prefix", "post", 2),
    ],
)
def test_vlm_matches_pytorch_twin_with_weights_loaded_both_ways(fusion, norm, lags):
    config = tiny(fusion, norm, lags)
    random.manual_seed(0)
    ours = VLM(config).to(dtype=np.float64).eval()
    gates_away_from_zero(ours)
    rng = np.random.default_rng(4)
    images = rng.standard_normal((2, 3, 8, 8))
    tokens = rng.integers(0, 13, size=(2, 6))
    targets = rng.integers(0, 13, size=(2, 6))

    # ours -> torch
    theirs = twin_of(config, ours.state_dict()).eval()
    assert next(theirs.parameters()).dtype == torch.float64
    logits, t_logits = run_both(ours, theirs, images, tokens, targets)
    assert_close(logits.data, t_logits, f"{fusion}/{norm} logits, our weights")
    compare_gradients(ours, theirs, f"{fusion}/{norm}, our weights: ")

    # torch -> ours, after giving torch fresh weights
    torch.manual_seed(1)
    fresh = TorchVLM(config).double().eval()
    with torch.no_grad():
        for name, param in fresh.named_parameters():
            param.copy_(torch.randn_like(param) * 0.3 if name.endswith("_gate") else param)
    theirs.load_state_dict(fresh.state_dict())
    ours.load_state_dict(to_ours(theirs))
    ours.zero_grad()
    theirs.zero_grad()
    logits, t_logits = run_both(ours, theirs, images, tokens, targets)
    assert_close(logits.data, t_logits, f"{fusion}/{norm} logits, torch weights")
    compare_gradients(ours, theirs, f"{fusion}/{norm}, torch weights: ")


def test_patches_are_torch_unfold_order():
    from minivlm.models import patchify

    images = np.random.default_rng(5).standard_normal((2, 3, 12, 8))
    expected = TF.unfold(torch.from_numpy(images), 4, stride=4).transpose(1, 2)
    assert_close(patchify(tensor(images, dtype=np.float64), 4).data, expected, "patches")


def test_initialisation_statistics_match_pytorch_defaults():
    random.manual_seed(0)
    linear = nn.Linear(400, 300)
    bound = 1 / np.sqrt(400)
    assert (
        np.abs(linear.weight.data).max() <= bound
        and np.abs(linear.weight.data).max() > 0.99 * bound
    )
    assert np.abs(linear.bias.data).max() <= bound
    assert abs(nn.Embedding(300, 400).weight.data.std() - 1.0) < 0.01
    attention = nn.MultiHeadAttention(64, 4)
    xavier = np.sqrt(6 / (64 + 192))
    assert np.abs(attention.in_proj_weight.data).max() <= xavier
    assert not attention.in_proj_bias.data.any() and not attention.out_proj.bias.data.any()
