"""Decoding: the KV cache changes nothing, greedy agrees with teacher forcing, sampling filters."""

from __future__ import annotations

import numpy as np
import pytest

from minivlm.autograd import Tensor, no_grad
from minivlm.data import SceneDataset
from minivlm.generate import SamplingConfig, caption_images, caption_prompt, generate, next_tokens
from minivlm.train import Trainer, preset


@pytest.fixture(
    scope="module",
    params=[("cross", 0), ("gated", 0), ("prefix", 0), ("cross", 3)],
    ids=["cross", "gated", "prefix", "cross-lags3"],
)
def trained(request, tmp_path_factory):
    """A tiny model of each fusion kind (and one with lagged token embeddings), trained a
    few steps so its outputs are not flat."""
    from minivlm.train import train

    fusion, lags = request.param
    out = tmp_path_factory.mktemp(fusion)
    config = preset("tiny", out_dir=str(out), steps=6, fusion=fusion, token_lags=lags, lr=3e-3)
    trainer = train(config)
    data = SceneDataset(trainer.config.data, "iid", 3, 5, tokenizer=trainer.tokenizer)
    return trainer, np.stack([data[i].image for i in range(3)])


def test_cached_decoding_gives_the_same_tokens_and_logits_as_uncached(trained):
    trainer, images = trained
    args = (trainer.model, trainer.tokenizer, images, [caption_prompt(trainer.tokenizer)] * 3)
    cached = generate(*args, max_new_tokens=8, keep_logits=True)
    full = generate(*args, max_new_tokens=8, keep_logits=True, use_cache=False)
    for a, b in zip(cached, full, strict=False):
        assert a.ids == b.ids
        np.testing.assert_allclose(np.stack(a.logits), np.stack(b.logits), rtol=1e-4, atol=1e-5)


def test_greedy_decoding_agrees_with_teacher_forcing_on_its_own_output(trained):
    trainer, images = trained
    results = generate(
        trainer.model,
        trainer.tokenizer,
        images,
        [caption_prompt(trainer.tokenizer)] * 3,
        max_new_tokens=8,
        keep_logits=True,
    )
    for b, result in enumerate(results):
        sequence = np.array([caption_prompt(trainer.tokenizer) + result.ids[:-1]])
        with no_grad():
            logits = trainer.model(Tensor(images[b : b + 1]), sequence).numpy()[0]  # (T, V)
        forced = logits[len(caption_prompt(trainer.tokenizer)) - 1 :]
        assert forced.argmax(axis=-1).tolist() == result.ids
        np.testing.assert_allclose(forced, np.stack(result.logits), rtol=1e-4, atol=1e-5)


def test_generation_stops_at_eos_and_records_attention_per_step(trained):
    trainer, images = trained
    (result,) = caption_images(
        trainer.model, trainer.tokenizer, images[:1], return_attention=True, max_new_tokens=5
    )
    assert len(result.ids) <= 5
    assert trainer.tokenizer.eos_id not in result.ids[:-1]
    steps, blocks, heads, patches = result.attention.shape
    assert (steps, blocks, heads) == (
        len(result.ids),
        trainer.config.model.n_blocks,
        trainer.config.model.n_heads,
    )
    assert patches == (trainer.config.model.image_size // trainer.config.model.patch_size) ** 2


def test_prompts_of_different_lengths_are_refused():
    trainer = Trainer.create(preset("tiny"))
    with pytest.raises(ValueError, match="one prompt per image"):
        generate(
            trainer.model,
            trainer.tokenizer,
            np.zeros((2, 3, 32, 32), np.float32),
            [[2, 4], [2, 5, 6]],
        )


def test_greedy_takes_the_argmax():
    logits = np.array([[0.1, 3.0, -1.0], [5.0, 0.0, 0.0]])
    assert next_tokens(logits, SamplingConfig(), np.random.default_rng(0)).tolist() == [1, 0]


def test_top_k_one_is_greedy_at_any_temperature():
    logits = np.random.default_rng(1).standard_normal((50, 9))
    picked = next_tokens(logits, SamplingConfig(temperature=5.0, top_k=1), np.random.default_rng(0))
    np.testing.assert_array_equal(picked, logits.argmax(axis=-1))


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    picked = next_tokens(
        logits, SamplingConfig(temperature=1.0, top_p=0.7), np.random.default_rng(0)
    )
    assert set(picked.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 never drawn
    assert abs((picked == 0).mean() - 0.5 / 0.8) < 0.04


def test_temperature_sampling_follows_the_softmax():
    logits = np.log(np.array([[0.2, 0.8]] * 4000))
    picked = next_tokens(logits, SamplingConfig(temperature=1.0), np.random.default_rng(0))
    assert abs(picked.mean() - 0.8) < 0.03


@pytest.mark.parametrize(
    "bad, message",
    [(dict(temperature=-1), "temperature"), (dict(top_k=-2), "top_k"), (dict(top_p=0.0), "top_p")],
)
def test_bad_sampling_settings_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**bad)
