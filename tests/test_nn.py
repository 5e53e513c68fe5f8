"""minivlm.nn: registration, state dicts, modes, each layer's shapes and gradients."""

import numpy as np
import pytest

from minivlm import Tensor, gradcheck, nn, no_grad, random, tensor


def f64(*shape, seed=0):
    return tensor(np.random.default_rng(seed).standard_normal(shape), dtype=np.float64)


def check_module_gradients(module: nn.Module, *inputs, output=lambda out: out, **options):
    """gradcheck of output(module(*inputs, **options)) wrt every parameter and every
    floating input, in float64."""
    module.to(dtype=np.float64)
    names = [name for name, _ in module.named_parameters()]
    params = list(module.parameters())

    def fn(*leaves):
        weights, args = leaves[: len(params)], leaves[len(params) :]
        return output(
            nn.functional_call(module, dict(zip(names, weights, strict=True)), *args, **options)
        )

    return gradcheck(fn, params + list(inputs))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3))
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 2)

    def forward(self, x):
        return self.second(self.first(x * self.scale))


# -- Module ----------------------------------------------------------------------------
def test_parameters_are_named_by_dotted_path_in_pytorch_order():
    names = [name for name, _ in Pair().named_parameters()]
    assert names == ["scale", "first.weight", "first.bias", "second.weight", "second.bias"]
    assert [name for name, _ in Pair().named_children()] == ["first", "second"]
    assert len(list(Pair().modules())) == 3


def test_shared_parameter_is_listed_once():
    pair = Pair()
    pair.second.shared = pair.scale
    assert sum(p is pair.scale for p in pair.parameters()) == 1


def test_reassigning_an_attribute_updates_the_registry():
    pair = Pair()
    pair.first = None
    assert [name for name, _ in pair.named_parameters()] == [
        "scale",
        "second.weight",
        "second.bias",
    ]
    del pair.second
    assert [name for name, _ in pair.named_parameters()] == ["scale"]


def test_assigning_before_super_init_raises_a_clear_error():
    class Forgetful(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Forgetful()


def test_parameter_requires_grad_and_refuses_integers():
    assert nn.Parameter(np.zeros(2)).requires_grad
    with pytest.raises(TypeError, match="floating"):
        nn.Parameter(np.zeros(2, dtype=np.int64))


def test_train_and_eval_reach_every_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_num_parameters_and_to_dtype():
    pair = Pair()
    pair(tensor(np.ones((2, 3)))).sum().backward()
    assert pair.first.weight.grad is not None
    pair.zero_grad()
    assert all(p.grad is None for p in pair.parameters())
    assert pair.num_parameters() == 3 + 3 * 4 + 4 + 4 * 2 + 2
    weight = pair.first.weight
    pair.to(dtype=np.float64)
    assert pair.first.weight is weight and all(p.dtype == np.float64 for p in pair.parameters())


def test_to_refuses_unknown_devices_and_integer_dtypes():
    with pytest.raises(ValueError, match="device"):
        Pair().to("tpu")
    with pytest.raises(TypeError, match="floating"):
        Pair().to(dtype=np.int32)


def test_repr_shows_the_module_tree():
    text = repr(nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    assert "(0): Linear(in_features=2, out_features=3, bias=True)" in text and "(1): ReLU()" in text


# -- state dicts -----------------------------------------------------------------------
def test_state_dict_round_trip_copies_values_in_place():
    source, target = Pair(), Pair()
    state = source.state_dict()
    assert list(state) == [name for name, _ in source.named_parameters()]
    state["scale"][...] = 7.0  # a copy: the model does not change
    assert not np.any(source.scale.data == 7.0)
    weight = target.first.weight.data
    target.load_state_dict(source.state_dict())
    assert target.first.weight.data is weight  # loaded in place
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[name], value, err_msg=name)


def test_strict_load_lists_every_missing_unexpected_and_mis_shaped_entry_at_once():
    state = Pair().state_dict()
    del state["first.bias"]
    state["extra.weight"] = np.zeros(3)
    state["second.weight"] = np.zeros((5, 5))
    with pytest.raises(nn.StateDictError) as err:
        Pair().load_state_dict(state)
    message = str(err.value)
    for expected in (
        "missing: first.bias",
        "unexpected: extra.weight",
        "wrong shape: second.weight: got (5, 5), expected (2, 4)",
    ):
        assert expected in message


def test_non_strict_load_reports_missing_and_unexpected_but_refuses_shapes():
    state = Pair().state_dict()
    del state["scale"]
    state["extra"] = np.zeros(1)
    result = Pair().load_state_dict(state, strict=False)
    assert result.missing_keys == ["scale"] and result.unexpected_keys == ["extra"]
    state["first.weight"] = np.zeros((1, 1))
    with pytest.raises(nn.StateDictError, match="wrong shape: first.weight"):
        Pair().load_state_dict(state, strict=False)


def test_functional_call_routes_gradients_to_given_tensors_and_restores_parameters():
    pair = Pair()
    names = [name for name, _ in pair.named_parameters()]
    replacements = {
        n: Tensor(p.data.copy(), requires_grad=True) for n, p in pair.named_parameters()
    }
    nn.functional_call(pair, replacements, tensor(np.ones((2, 3)))).sum().backward()
    assert all(replacements[n].grad is not None for n in names)
    assert all(p.grad is None for p in pair.parameters())
    assert pair.first.weight is pair._modules["first"]._parameters["weight"]
    with pytest.raises(KeyError, match="nope"):
        nn.functional_call(pair, {"nope": replacements["scale"]}, tensor(np.ones((2, 3))))


# -- containers ------------------------------------------------------------------------
def test_sequential_names_children_by_position_and_chains_them():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model(tensor(np.ones((4, 3)))).shape == (4, 2)
    assert model[-1] is model[2] and len(model) == 3
    with pytest.raises(IndexError, match="out of range"):
        model[3]


def test_module_list_refuses_non_modules():
    with pytest.raises(TypeError, match="expected a Module"):
        nn.ModuleList([nn.ReLU(), 3])


# -- layers: shapes, initialisation ----------------------------------------------------
def test_layer_output_shapes():
    x = tensor(np.ones((2, 5, 6)))
    assert nn.Linear(6, 3)(x).shape == (2, 5, 3)
    assert nn.Linear(6, 3)(tensor(np.ones((4, 6)))).shape == (4, 3)
    assert nn.LayerNorm(6)(x).shape == (2, 5, 6)
    assert nn.Embedding(10, 4)(np.array([[1, 2, 9]])).shape == (1, 3, 4)
    assert nn.Dropout(0.5)(x).shape == (2, 5, 6)
    assert nn.ReLU()(x).shape == nn.GELU()(x).shape == (2, 5, 6)
    assert nn.TransformerEncoderLayer(6, 2, 12)(x).shape == (2, 5, 6)


def test_initialisation_follows_pytorch_defaults():
    random.manual_seed(0)
    linear = nn.Linear(400, 300)
    bound = 1 / np.sqrt(400)
    assert 0.99 * bound < np.abs(linear.weight.data).max() <= bound
    assert np.abs(linear.bias.data).max() <= bound
    assert abs(nn.Embedding(300, 400).weight.data.std() - 1.0) < 0.01
    norm = nn.LayerNorm(5)
    assert (norm.weight.data == 1).all() and (norm.bias.data == 0).all() and norm.eps == 1e-5
    attention = nn.MultiHeadAttention(64, 4)
    assert np.abs(attention.in_proj_weight.data).max() <= np.sqrt(6 / (64 + 192))
    assert not attention.in_proj_bias.data.any() and not attention.out_proj.bias.data.any()
    assert linear.weight.dtype == np.float32


def test_initialisation_repeats_with_the_seed():
    random.manual_seed(3)
    first = nn.Linear(4, 4).weight.data.copy()
    random.manual_seed(3)
    np.testing.assert_array_equal(nn.Linear(4, 4).weight.data, first)


def test_dropout_is_active_in_training_mode_only():
    x = tensor(np.ones((100, 100)))
    dropout = nn.Dropout(0.5)
    kept = dropout(x).data
    assert set(np.unique(kept)) == {0.0, 2.0}
    assert (dropout.eval()(x).data == 1).all()
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.0)


# -- layers: gradients -----------------------------------------------------------------
@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: nn.Linear(4, 3), (2, 3, 4)),
        (lambda: nn.LayerNorm(4), (2, 3, 4)),
        (lambda: nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 2)), (3, 4)),
        (lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU()), (3, 4)),
    ],
    ids=["linear", "layer_norm", "sequential_gelu", "sequential_relu"],
)
def test_layer_gradients_match_finite_differences(make, shape):
    check_module_gradients(make(), f64(*shape))


def test_embedding_gradient_matches_finite_differences():
    embedding = nn.Embedding(5, 3)
    ids = np.array([[0, 2, 2], [4, 1, 0]])
    check_module_gradients(embedding, ids)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_gradients_match_finite_differences(norm_first):
    layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.1, norm_first=norm_first).eval()
    check_module_gradients(layer, f64(2, 3, 4))


def test_attention_gradients_match_finite_differences():
    cross = nn.MultiHeadAttention(4, 2)
    check_module_gradients(
        cross, f64(2, 3, 4, seed=1), f64(2, 5, 4, seed=2), output=lambda out: out[0]
    )


def test_attention_gradients_through_output_and_weights_with_masks_match_finite_differences():
    check_module_gradients(
        nn.MultiHeadAttention(4, 2),
        f64(2, 3, 4, seed=3),
        is_causal=True,
        key_lengths=np.array([3, 2]),
        need_weights=True,
    )


# -- attention behaviour ---------------------------------------------------------------
def test_attention_shapes_for_self_and_cross_attention():
    attention = nn.MultiHeadAttention(8, 2)
    out, weights = attention(tensor(np.ones((2, 3, 8))))
    assert out.shape == (2, 3, 8) and weights is None
    out, weights = attention(
        tensor(np.ones((2, 3, 8))), tensor(np.ones((2, 7, 8))), need_weights=True
    )
    assert out.shape == (2, 3, 8) and weights.shape == (2, 2, 3, 7)
    np.testing.assert_allclose(weights.data.sum(-1), 1, rtol=1e-6)


def test_causal_attention_ignores_later_positions():
    attention = nn.MultiHeadAttention(8, 2).to(dtype=np.float64)
    x = f64(1, 5, 8).data
    changed = x.copy()
    changed[:, 3:] += 1.0
    first, _ = attention(tensor(x, dtype=np.float64), is_causal=True)
    second, _ = attention(tensor(changed, dtype=np.float64), is_causal=True)
    np.testing.assert_allclose(first.data[:, :3], second.data[:, :3], rtol=1e-12)
    assert not np.allclose(first.data[:, 3:], second.data[:, 3:])


def test_key_lengths_hide_padded_keys():
    attention = nn.MultiHeadAttention(8, 2).to(dtype=np.float64)
    q, kv = f64(2, 3, 8, seed=1).data, f64(2, 6, 8, seed=2).data
    padded = kv.copy()
    padded[1, 4:] = 100.0
    lengths = np.array([6, 4])
    first, weights = attention(
        tensor(q, dtype=np.float64),
        tensor(kv, dtype=np.float64),
        key_lengths=lengths,
        need_weights=True,
    )
    second, _ = attention(
        tensor(q, dtype=np.float64), tensor(padded, dtype=np.float64), key_lengths=lengths
    )
    np.testing.assert_allclose(first.data, second.data, rtol=1e-12)
    assert (weights.data[1, :, :, 4:] == 0).all()


def test_kv_cache_decoding_step_by_step_equals_the_full_causal_pass():
    attention = nn.MultiHeadAttention(8, 2).to(dtype=np.float64)
    x = f64(2, 5, 8, seed=4)
    with no_grad():
        full, _ = attention(x, is_causal=True)
        cache = nn.KVCache()
        prompt, _ = attention(x[:, :2], is_causal=True, cache=cache)
        steps = [attention(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in range(2, 5)]
    assert cache.length == 5
    np.testing.assert_allclose(prompt.data, full.data[:, :2], rtol=1e-12)
    for t, step in zip(range(2, 5), steps, strict=True):
        np.testing.assert_allclose(
            step.data, full.data[:, t : t + 1], rtol=1e-12, err_msg=f"step {t}"
        )


def test_fixed_kv_cache_projects_its_keys_once():
    cache = nn.KVCache(fixed=True)
    calls = []

    def project():
        calls.append(1)
        return f64(1, 2, 3, 4), f64(1, 2, 3, 4)

    keys, _ = cache.keys_values(project)
    again, _ = cache.keys_values(project)
    assert again is keys and len(calls) == 1 and cache.length == 3


def test_attention_refuses_a_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiHeadAttention(10, 3)


# -- one attention class, three roles ----------------------------------------------------
PACKED_NAMES = {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
SEPARATE_NAMES = {f"{p}_linear.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")}


def randomised_attention(packed: bool, seed: int = 0) -> nn.MultiHeadAttention:
    """A float64 MultiHeadAttention(8, 2) with every parameter, biases too, drawn at random."""
    attention = nn.MultiHeadAttention(8, 2, packed=packed).to(dtype=np.float64)
    rng = np.random.default_rng(seed)
    for param in attention.parameters():
        param.data[...] = 0.5 * rng.standard_normal(param.shape)
    return attention


def plain_attention(attention, query, context, causal=False, key_lengths=None):
    """softmax(Q_h K_h^T / sqrt(dh), masked) V_h head by head, then the output
    projection, in NumPy, with the weights read from either parameter layout."""
    params = {name: param.data for name, param in attention.named_parameters()}
    d, heads = attention.embed_dim, attention.num_heads
    if attention.packed:
        w, b = params["in_proj_weight"], params["in_proj_bias"]
        (wq, wk, wv), (bq, bk, bv) = np.split(w, 3), np.split(b, 3)
        wo, bo = params["out_proj.weight"], params["out_proj.bias"]
    else:
        wq, wk, wv, wo = (params[f"{p}_linear.weight"] for p in ("q", "k", "v", "out"))
        bq, bk, bv, bo = (params[f"{p}_linear.bias"] for p in ("q", "k", "v", "out"))
    q, k, v = query @ wq.T + bq, context @ wk.T + bk, context @ wv.T + bv  # (B, L, d)
    (batch, lq, _), lk, dh = q.shape, k.shape[1], d // heads
    visible = np.ones((batch, lq, lk), dtype=bool)
    if causal:  # bottom-right aligned: query i sees keys up to lk - lq + i
        visible &= np.tril(np.ones((lq, lk), dtype=bool), lk - lq)
    if key_lengths is not None:
        visible &= np.arange(lk) < np.asarray(key_lengths)[:, None, None]
    out = np.zeros_like(q)
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / np.sqrt(dh)  # (B, Lq, Lk)
        scores = np.where(visible, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        out[..., cols] = probs / probs.sum(-1, keepdims=True) @ v[..., cols]
    return out @ wo.T + bo


def test_each_layout_has_its_own_parameter_names():
    packed = {name for name, _ in nn.MultiHeadAttention(8, 2).named_parameters()}
    separate = {name for name, _ in nn.MultiHeadAttention(8, 2, packed=False).named_parameters()}
    assert packed == PACKED_NAMES, f"packed layout (torch.nn.MultiheadAttention): {packed}"
    assert separate == SEPARATE_NAMES, f"separate layout (the decoder's): {separate}"
    assert set(nn.TransformerEncoderLayer(8, 2).state_dict()) >= {
        f"self_attn.{name}" for name in PACKED_NAMES
    }


def test_separate_layout_draws_the_same_weights_as_four_linear_layers():
    random.manual_seed(5)
    linears = [nn.Linear(8, 8) for _ in range(4)]
    random.manual_seed(5)
    attention = nn.MultiHeadAttention(8, 2, packed=False)
    modules = (attention.q_linear, attention.k_linear, attention.v_linear, attention.out_linear)
    for linear, module in zip(linears, modules, strict=True):
        np.testing.assert_array_equal(module.weight.data, linear.weight.data)
        np.testing.assert_array_equal(module.bias.data, linear.bias.data)


def test_encoder_self_attention_equals_the_plain_computation():
    attention = randomised_attention(packed=True, seed=1)
    x, lengths = f64(2, 5, 8, seed=2), np.array([5, 3])
    out, _ = attention(x, key_lengths=lengths)
    expected = plain_attention(attention, x.data, x.data, key_lengths=lengths)
    np.testing.assert_allclose(out.data, expected, rtol=1e-10, atol=1e-12)


def test_decoder_causal_self_attention_with_a_growing_cache_equals_the_plain_computation():
    attention = randomised_attention(packed=False, seed=3)
    x = f64(2, 5, 8, seed=4)
    expected = plain_attention(attention, x.data, x.data, causal=True)
    full, _ = attention(x, is_causal=True)
    np.testing.assert_allclose(full.data, expected, rtol=1e-10, atol=1e-12)
    cache = nn.KVCache()
    with no_grad():
        pieces = [attention(x[:, :2], is_causal=True, cache=cache)[0]]
        pieces += [attention(x[:, t : t + 1], is_causal=True, cache=cache)[0] for t in (2, 3, 4)]
    assert cache.length == 5
    np.testing.assert_allclose(
        np.concatenate([p.data for p in pieces], axis=1), expected, rtol=1e-10, atol=1e-12
    )


def test_cross_attention_with_a_fixed_cache_equals_the_plain_computation():
    attention = randomised_attention(packed=False, seed=5)
    text, image = f64(2, 3, 8, seed=6), f64(2, 4, 8, seed=7)
    expected = plain_attention(attention, text.data, image.data)
    cache = nn.KVCache(fixed=True)
    with no_grad():
        first, weights = attention(text[:, :2], image, cache=cache, need_weights=True)
        second, _ = attention(text[:, 2:], None, cache=cache)  # the image is read once
    assert cache.length == 4 and weights.shape == (2, 2, 2, 4)
    np.testing.assert_allclose(first.data, expected[:, :2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(second.data, expected[:, 2:], rtol=1e-10, atol=1e-12)


def attention_with_cache_gradcheck(attention: nn.MultiHeadAttention, run, *inputs):
    """gradcheck of run(module, *inputs) (a fresh cache each call) wrt every parameter
    and input, float64, a random upstream gradient on each output."""
    names = [name for name, _ in attention.named_parameters()]
    params = list(attention.parameters())

    def fn(*leaves):
        weights = dict(zip(names, leaves[: len(params)], strict=True))
        with nn.swapped_parameters(attention, weights):
            return run(attention, *leaves[len(params) :])

    return gradcheck(fn, params + list(inputs))


def test_cross_attention_gradients_through_a_fixed_cache_match_finite_differences():
    def run(attention, text, image):
        cache = nn.KVCache(fixed=True)
        first, weights = attention(text[:, :2], image, cache=cache, need_weights=True)
        second, _ = attention(text[:, 2:], None, cache=cache)
        return first, weights, second

    attention = randomised_attention(packed=False, seed=8)
    attention_with_cache_gradcheck(attention, run, f64(2, 3, 8, seed=9), f64(2, 4, 8, seed=10))


def test_causal_self_attention_gradients_through_a_growing_cache_match_finite_differences():
    def run(attention, x):
        cache = nn.KVCache()
        prompt, _ = attention(x[:, :2], is_causal=True, cache=cache)
        step, weights = attention(x[:, 2:], is_causal=True, cache=cache, need_weights=True)
        return prompt, step, weights

    attention = randomised_attention(packed=False, seed=11)
    attention_with_cache_gradcheck(attention, run, f64(2, 4, 8, seed=12))
