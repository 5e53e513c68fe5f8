"""minivlm.models: config checks, shapes, parameter counts, gradients, cached decoding,
and the errors that bad images and tokens get."""

import dataclasses

import numpy as np
import pytest

from minivlm import F, gradcheck, no_grad, random, tensor
from minivlm.checks import model_gradcheck, tiny_batch, tiny_model
from minivlm.data import IGNORE_INDEX
from minivlm.models import (
    FUSIONS,
    VLM,
    VisionEncoder,
    VLMBlock,
    VLMConfig,
    patchify,
    tiny_config,
)
from minivlm.nn import MultiHeadAttention, functional_call
from minivlm.train import sequence_loss, target_weights


def tiny_inputs(config, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, config.image_size, config.image_size))
    tokens = rng.integers(0, config.vocab_size, size=(batch, config.max_len))
    return images, tokens


# -- config ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes,message",
    [
        ({"image_size": 100}, "image_size 100 is not divisible by patch_size 16"),
        ({"d_model": 130}, "d_model 130 is not divisible by n_heads 4"),
        ({"fusion": "late"}, "fusion must be one of"),
        ({"norm": "middle"}, "norm must be one of"),
        ({"n_blocks": 0}, "n_blocks must be a positive integer, got 0"),
        ({"vocab_size": 2.5}, "vocab_size must be a positive integer"),
        ({"encoder_dropout": 1.0}, "encoder_dropout must be in"),
    ],
)
def test_config_refuses_inconsistent_values_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        VLMConfig.reference().replace(**changes)


def test_config_round_trips_through_a_dict_and_refuses_unknown_fields():
    config = VLMConfig.reference(d_model=64, fusion="gated")
    assert VLMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        VLMConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_reference_preset_is_the_tutorial_model():
    config = VLMConfig.reference()
    assert (config.image_size, config.patch_size, config.n_heads, config.n_encoder_layers) == (
        224,
        16,
        4,
        2,
    )
    assert (config.n_blocks, config.ffn_mult, config.encoder_dropout, config.max_len) == (
        2,
        4,
        0.1,
        64,
    )
    assert config.n_patches == 196 and config.fusion == "cross" and config.norm == "post"


@pytest.mark.parametrize("d_model,count", [(64, 303_197), (128, 1_065_117)])
def test_reference_model_has_the_reference_parameter_count(d_model, count):
    assert VLM(VLMConfig.reference(d_model=d_model, vocab_size=29)).num_parameters() == count


# -- parts -----------------------------------------------------------------------------
def test_patchify_cuts_row_major_patches_flattened_channel_row_column():
    images = np.arange(2 * 3 * 4 * 6, dtype=np.float64).reshape(2, 3, 4, 6)
    patches = patchify(tensor(images, dtype=np.float64), 2).data
    expected = [
        images[b, :, r * 2 : (r + 1) * 2, c * 2 : (c + 1) * 2].reshape(-1)
        for b in range(2)
        for r in range(2)
        for c in range(3)
    ]
    np.testing.assert_array_equal(patches, np.array(expected).reshape(2, 6, 12))


def test_part_shapes():
    encoder = VisionEncoder(8, 4, 8, 2, 1, dropout=0.0)
    features = encoder(np.ones((3, 3, 8, 8)))
    assert features.shape == (3, 4, 8)
    assert encoder.position_embedding.shape == (1, 4, 8)
    text = tensor(np.ones((3, 5, 8)))
    out, weights = MultiHeadAttention(8, 2, packed=False)(text, features, need_weights=True)
    assert out.shape == (3, 5, 8) and weights.shape == (3, 2, 5, 4)
    for fusion in FUSIONS:
        x, _ = VLMBlock(8, 2, fusion=fusion)(text, features)
        assert x.shape == (3, 5, 8), fusion


def test_block_parameter_names():
    names = {n for n, _ in VLMBlock(8, 2, fusion="gated").named_parameters()}
    for expected in (
        "cross_gate",
        "ff_gate",
        "self_attention.q_linear.weight",
        "cross_attention.out_linear.bias",
        "feed_forward.0.weight",
        "feed_forward.2.bias",
        "norm1.weight",
        "norm2.bias",
        "norm3.weight",
    ):
        assert expected in names
    prefix = {n for n, _ in VLMBlock(8, 2, fusion="prefix").named_parameters()}
    assert not any(n.startswith(("cross_attention", "norm2")) for n in prefix)


# -- whole model -----------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_forward_gives_logits_and_backward_reaches_every_parameter(fusion, norm):
    model = VLM(tiny_config(fusion, norm))
    images, tokens = tiny_inputs(model.config)
    logits = model(images, tokens)
    assert logits.shape == (2, 8, 11) and logits.dtype == np.float32
    F.cross_entropy(F.reshape(logits, (-1, 11)), tokens.reshape(-1)).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.shape == param.shape, name


@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_gradient_wrt_every_parameter_matches_finite_differences(fusion):
    report = model_gradcheck(fusion, directions=2, samples=1)
    assert report.passed, f"{fusion}:\n{report}"
    assert len(report.inputs) == len(list(tiny_model(fusion).parameters()))


def test_pre_norm_loss_gradient_matches_finite_differences():
    report = model_gradcheck("gated", norm="pre", directions=2, samples=1)
    assert report.passed, str(report)


def targets_and_weights(tokens, seed=0):
    """Next-token targets (B, T - 1) with some IGNORE_INDEX, and "sequence" weights."""
    rng = np.random.default_rng(seed)
    targets = tokens[:, 1:].copy()
    targets[rng.random(targets.shape) < 0.3] = IGNORE_INDEX
    targets[:, 0] = tokens[:, 1]  # every row trains at least one target
    answers = rng.random(targets.shape) < 0.5
    return targets, target_weights(targets, answers, "sequence", answer_weight=3.0)


def plain_loss(logits, targets, weights=None):
    """-log softmax(logits)[target] in NumPy: the mean over trained targets, or weighted."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))  # (B, T, V)
    trained = targets != IGNORE_INDEX
    picked = np.take_along_axis(log_probs, np.where(trained, targets, 0)[..., None], -1)[..., 0]
    if weights is None:
        return -picked[trained].mean()
    return -(picked * weights * trained).sum()


@pytest.mark.parametrize("weighted", [False, True], ids=["mean", "weighted"])
def test_forward_with_targets_returns_the_logits_and_the_trainers_loss(weighted):
    model = tiny_model("cross", seed=3)
    images, tokens = tiny_batch(model, seed=3)
    inputs = tokens[:, :-1]
    targets, weights = targets_and_weights(tokens)
    weights = weights if weighted else None
    logits, loss = model(images, inputs, targets, weights)
    np.testing.assert_array_equal(logits.data, model(images, inputs).data)
    assert loss.shape == ()
    expected = plain_loss(logits.data, targets, weights)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    trainers = sequence_loss(model, images, inputs, targets, weights=weights).item()
    np.testing.assert_allclose(trainers, expected, rtol=1e-12)


def test_weighted_loss_gradient_with_ignored_targets_matches_finite_differences():
    model = tiny_model("gated", seed=4)
    images, tokens = tiny_batch(model, seed=4)
    targets, weights = targets_and_weights(tokens, seed=4)
    names = [name for name, _ in model.named_parameters()]

    def loss(*params):
        parameters = dict(zip(names, params, strict=True))
        return functional_call(model, parameters, images, tokens[:, :-1], targets, weights)[1]

    report = gradcheck(
        loss,
        list(model.parameters()),
        full_limit=0,
        directions=1,
        samples=1,
        raise_on_failure=False,
    )
    assert report.passed, str(report)


@pytest.mark.parametrize(
    "targets,weights,message",
    [
        (np.zeros((2, 3), dtype=np.int64), None, r"targets: expected shape \(2, 7\)"),
        (np.zeros((2, 7), dtype=np.int64), np.ones((2, 6)), r"weights: expected shape \(2, 7\)"),
        (None, np.ones((2, 7)), "weights: given without targets"),
    ],
)
def test_bad_targets_and_weights_get_an_error_naming_the_argument(targets, weights, message):
    model = VLM(tiny_config())
    images, tokens = tiny_inputs(model.config)
    with pytest.raises(ValueError, match=message):
        model(images, tokens[:, :-1], targets, weights)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cached_decoding_step_by_step_equals_the_full_forward(fusion):
    model = tiny_model(fusion, seed=1)
    images, tokens = tiny_batch(model, seed=1)
    with no_grad():
        full = model(images, tokens).data
        features = model.encode_images(images)
        cache = model.new_cache()
        steps = [model.decode(tokens[:, :3], features, cache=cache)]
        steps += [model.decode(tokens[:, t : t + 1], None, cache=cache) for t in range(3, 8)]
    assert cache.length == 8
    np.testing.assert_allclose(
        np.concatenate([s.data for s in steps], axis=1), full, rtol=1e-10, atol=1e-12
    )


def test_loss_gradient_with_lagged_token_embeddings_matches_finite_differences():
    report = model_gradcheck("cross", token_lags=2, directions=2, samples=1)
    assert report.passed, str(report)
    assert any(name.startswith("lag_embeddings.1.") for name in report.names)


def test_lagged_embeddings_add_the_previous_tokens_rows():
    model = tiny_model("cross", token_lags=2)
    ids = np.array([[3, 1, 4, 1, 5]])
    got = model.lagged_embeddings(ids, None, 0).data  # (1, 5, d)
    first, second = (table.weight.data for table in model.lag_embeddings)
    none = model.config.vocab_size  # the row for "before the first token"
    lag1 = first[[none, 3, 1, 4, 1]]  # token t-1 at each position t
    lag2 = second[[none, none, 3, 1, 4]]  # token t-2
    np.testing.assert_allclose(got[0], lag1 + lag2, rtol=1e-12)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cached_decoding_with_lagged_embeddings_equals_the_full_forward(fusion):
    model = tiny_model(fusion, seed=2, token_lags=3)
    images, tokens = tiny_batch(model, seed=2)
    with no_grad():
        full = model(images, tokens).data
        cache = model.new_cache()
        steps = [model.decode(tokens[:, :2], model.encode_images(images), cache=cache)]
        steps += [model.decode(tokens[:, t : t + 1], None, cache=cache) for t in range(2, 8)]
    np.testing.assert_allclose(
        np.concatenate([s.data for s in steps], axis=1), full, rtol=1e-10, atol=1e-12
    )


def test_lagged_embeddings_refuse_a_start_without_a_cache():
    model = tiny_model("cross", token_lags=1)
    images, tokens = tiny_batch(model)
    with pytest.raises(ValueError, match="start: got 3 without a cache"):
        model.decode(tokens[:, 3:5], model.encode_images(images), start=3)


@pytest.mark.parametrize("lags", [-1, 8, 1.5, True])
def test_token_lags_outside_the_text_length_is_refused(lags):
    with pytest.raises(ValueError, match=f"token_lags must be .*got {lags!r}"):
        tiny_config(token_lags=lags)


def test_decoding_with_an_explicit_start_position():
    model = tiny_model("cross")
    images, tokens = tiny_batch(model)
    with no_grad():
        features = model.encode_images(images)
        full = model.decode(tokens, features).data
        cache = model.new_cache()
        model.decode(tokens[:, :4], features, cache=cache, start=0)
        step = model.decode(tokens[:, 4:5], features, cache=cache, start=4).data
    np.testing.assert_allclose(step, full[:, 4:5], rtol=1e-10)
    with pytest.raises(ValueError, match="start: got 2, expected 5"):
        model.decode(tokens[:, 5:6], features, cache=cache, start=2)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_return_attention_gives_per_block_weights_over_patches(fusion):
    model = tiny_model(fusion)
    images, tokens = tiny_batch(model)
    logits, attention = model.decode(tokens, model.encode_images(images), return_attention=True)
    assert logits.shape == (2, 8, 11) and len(attention) == 2
    for weights in attention:
        assert weights.shape == (2, 2, 8, 4)
        if fusion != "prefix":  # cross-attention rows are distributions over the patches
            np.testing.assert_allclose(weights.data.sum(-1), 1, rtol=1e-10)


def test_text_position_does_not_see_later_tokens():
    model = tiny_model("prefix")
    images, tokens = tiny_batch(model)
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    first, second = model(images, tokens).data, model(images, changed).data
    np.testing.assert_allclose(first[:, :5], second[:, :5], rtol=1e-12)
    assert not np.allclose(first[:, 5:], second[:, 5:])


def test_gated_model_starts_as_a_text_only_model():
    model = VLM(tiny_config("gated")).eval()
    images, tokens = tiny_inputs(model.config)
    np.testing.assert_array_equal(model(images, tokens).data, model(-images, tokens).data)


def test_every_fusion_reads_the_image():
    for fusion in ("cross", "prefix"):
        model = tiny_model(fusion)
        images, tokens = tiny_batch(model)
        assert not np.allclose(model(images, tokens).data, model(-images, tokens).data), fusion


def test_encoder_dropout_is_random_in_training_and_off_in_eval():
    config = dataclasses.replace(tiny_config(), encoder_dropout=0.5)
    model = VLM(config)
    images, tokens = tiny_inputs(config)
    random.manual_seed(0)
    assert not np.allclose(model(images, tokens).data, model(images, tokens).data)
    model.eval()
    np.testing.assert_array_equal(model(images, tokens).data, model(images, tokens).data)


def test_float64_model_takes_float32_images():
    model = tiny_model("cross")
    images, tokens = tiny_batch(model)
    assert model(images.astype(np.float32), tokens).dtype == np.float64


# -- bad input -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "images,error,message",
    [
        (
            np.ones((2, 3, 16, 16)),
            ValueError,
            r"images: expected shape \(B, 3, 8, 8\), got \(2, 3, 16, 16\)",
        ),
        (
            np.ones((2, 1, 8, 8)),
            ValueError,
            r"images: expected shape \(B, 3, 8, 8\), got \(2, 1, 8, 8\)",
        ),
        (np.ones((3, 8, 8)), ValueError, r"got \(3, 8, 8\)"),
        (
            np.ones((2, 3, 8, 8), dtype=np.uint8),
            TypeError,
            "images: expected floating pixel values, got dtype uint8",
        ),
        ("a picture", TypeError, "images: expected a Tensor or an array, got str"),
    ],
)
def test_bad_images_get_an_error_naming_the_argument(images, error, message):
    model = VLM(tiny_config())
    with pytest.raises(error, match=message):
        model(images, np.zeros((2, 3), dtype=np.int64))


@pytest.mark.parametrize(
    "tokens,error,message",
    [
        (
            np.array([[1, 11]]),
            ValueError,
            r"tokens: expected ids in 0..10 \(vocab_size 11\), got 11",
        ),
        (np.array([[-1, 2]]), ValueError, "tokens: expected ids in 0..10 .*got -1"),
        (
            np.zeros((1, 9), dtype=np.int64),
            ValueError,
            "tokens: 9 positions from start 0 exceed max_len 8",
        ),
        (np.zeros((1, 2)), TypeError, "tokens: expected integer ids, got dtype float64"),
        (np.zeros(3, dtype=np.int64), ValueError, r"tokens: expected shape \(B, T\).*got \(3,\)"),
    ],
)
def test_bad_tokens_get_an_error_naming_the_argument(tokens, error, message):
    model = VLM(tiny_config())
    with pytest.raises(error, match=message):
        model(np.ones((1, 3, 8, 8)), tokens)


def test_decode_needs_image_features_of_the_right_shape_on_its_first_call():
    model = VLM(tiny_config())
    tokens = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(TypeError, match="image_features: expected a Tensor of shape \\(2, 4, 8\\)"):
        model.decode(tokens, None)
    with pytest.raises(
        ValueError, match="image_features: expected shape \\(2, 4, 8\\), got \\(1, 4, 8\\)"
    ):
        model.decode(tokens, model.encode_images(np.ones((1, 3, 8, 8))))
    cache = model.new_cache()
    model.decode(tokens, model.encode_images(np.ones((2, 3, 8, 8))), cache=cache)
    with pytest.raises(ValueError, match="6 positions from start 3 exceed max_len 8"):
        model.decode(np.zeros((2, 6), dtype=np.int64), None, cache=cache)
