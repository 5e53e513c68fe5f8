"""Decoding: captions and answers from images, with a KV cache, and the choice of each
next token (greedy, temperature, top-k, top-p).

The image is encoded once; its cross-attention keys and values are projected on the
first decoding call and then only read, while each new token adds one position to
the self-attention caches. `use_cache=False` recomputes the whole prefix each step
(slow, kept as the reference that the cached path is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .autograd import Tensor, no_grad
from .data import Tokenizer
from .models import VLM


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p}")


def next_tokens(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of logits (B, V)."""
    if config.temperature == 0.0:
        return logits.argmax(axis=-1)
    scaled = logits.astype(np.float64) / config.temperature
    if config.top_k:
        kth = np.sort(scaled, axis=-1)[:, -min(config.top_k, scaled.shape[-1])][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if config.top_p < 1.0:
        probs = _nucleus(probs, config.top_p)
    cumulative = probs.cumsum(axis=-1)
    draws = rng.random((len(probs), 1)) * cumulative[:, -1:]
    return (cumulative < draws).sum(axis=-1)


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the most likely tokens whose mass reaches top_p (at least one); renormalise."""
    order = np.argsort(-probs, axis=-1)
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_before = sorted_probs.cumsum(axis=-1) - sorted_probs  # mass of the better tokens
    keep_sorted = mass_before < top_p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = probs * keep
    return kept / kept.sum(axis=-1, keepdims=True)


@dataclass
class Generated:
    """One decoded sequence: the new ids, their text, and what each step looked at."""

    ids: list[int]
    text: str
    logits: list[np.ndarray] = field(default_factory=list)  # per step, (V,)
    attention: np.ndarray | None = None  # (steps, blocks, heads, patches) with return_attention


ANSWER_ROOM = 10  # positions kept free for a (worked) answer after a long generated description


def caption_prompt(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.bos_id, tokenizer.caption_id]


def question_prompt(
    tokenizer: Tokenizer,
    question: str,
    description: list[int] | None = None,
    max_length: int | None = None,
) -> list[int]:
    """<bos> <question> question <answer>; with a description (generated caption ids,
    <eos> or not): <bos> <caption> description <question> question <answer>, the
    description cut short if needed so that the prompt is at most max_length long."""
    asked = [tokenizer.question_id, *tokenizer.encode(question), tokenizer.answer_id]
    if description is None:
        return [tokenizer.bos_id, *asked]
    described = [i for i in description if i != tokenizer.eos_id]
    if max_length is not None:
        described = described[: max(max_length - len(asked) - 2, 0)]
    return [tokenizer.bos_id, tokenizer.caption_id, *described, *asked]


def generate(
    model: VLM,
    tokenizer: Tokenizer,
    images: np.ndarray,
    prompts: list[list[int]],
    sampling: SamplingConfig | None = None,  # None: greedy
    max_new_tokens: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    return_attention: bool = False,
    keep_logits: bool = False,
) -> list[Generated]:
    """Continue each prompt (all of one length) after its image until <eos> or max_len.

    images (B, 3, S, S) float32 as from `image_to_array`; prompts: B lists of ids.
    """
    if len({len(p) for p in prompts}) != 1 or len(prompts) != len(images):
        raise ValueError(
            f"generate: expected one prompt per image ({len(images)}), all of one length; "
            f"got {len(prompts)} prompts of lengths {sorted({len(p) for p in prompts})}"
        )
    sampling = sampling or SamplingConfig()
    c = model.config
    prompt = np.array(prompts, dtype=np.int64)  # (B, P)
    limit = c.max_len - prompt.shape[1]
    steps = limit if max_new_tokens is None else min(max_new_tokens, limit)
    rng = np.random.default_rng(seed)
    device = model.token_embedding.weight.device
    model.eval()
    with no_grad():
        features = model.encode_images(Tensor(images).to(device))  # (B, N, d)
        decode = _cached_decoder(model, features) if use_cache else _full_decoder(model, features)
        sequence = prompt
        new_ids = np.zeros((len(prompt), 0), dtype=np.int64)
        done = np.zeros(len(prompt), dtype=bool)
        step_logits, step_attention = [], []
        for _ in range(steps):
            logits, attention = decode(sequence, return_attention)  # (B, V), per block (B, H, N)
            token = np.where(done, tokenizer.pad_id, next_tokens(logits, sampling, rng))
            new_ids = np.concatenate([new_ids, token[:, None]], axis=1)
            sequence = np.concatenate([sequence, token[:, None]], axis=1)
            step_logits.append(logits)
            if return_attention:
                step_attention.append(np.stack(attention, axis=1))  # (B, blocks, H, N)
            done |= token == tokenizer.eos_id
            if done.all():
                break
    return [
        _finish(
            tokenizer,
            new_ids[b],
            [logits[b] for logits in step_logits] if keep_logits else [],
            np.stack([a[b] for a in step_attention]) if return_attention else None,
        )
        for b in range(len(prompt))
    ]


def _cached_decoder(model: VLM, features: Tensor):
    """Feeds only the positions the cache has not seen; returns the last position's output."""
    cache = model.new_cache()

    def decode(sequence: np.ndarray, return_attention: bool):
        fresh = sequence[:, cache.length :]
        out = model.decode(
            fresh,
            features if cache.length == 0 else None,
            cache=cache,
            return_attention=return_attention,
        )
        return _last_position(out, return_attention)

    return decode


def _full_decoder(model: VLM, features: Tensor):
    def decode(sequence: np.ndarray, return_attention: bool):
        return _last_position(
            model.decode(sequence, features, return_attention=return_attention), return_attention
        )

    return decode


def _last_position(out, return_attention: bool):
    logits, attention = out if return_attention else (out, [])
    last = logits.numpy()[:, -1]  # (B, V)
    return last, [w.numpy()[:, :, -1] for w in attention]  # per block (B, H, N)


def _finish(tokenizer: Tokenizer, ids: np.ndarray, logits: list, attention) -> Generated:
    ids = ids.tolist()
    if tokenizer.eos_id in ids:
        cut = ids.index(tokenizer.eos_id)
        ids, logits = ids[: cut + 1], logits[: cut + 1]
        attention = None if attention is None else attention[: cut + 1]
    text = tokenizer.decode([i for i in ids if i != tokenizer.eos_id])
    return Generated(ids, text, logits, attention)


def caption_images(
    model: VLM, tokenizer: Tokenizer, images: np.ndarray, **options
) -> list[Generated]:
    return generate(model, tokenizer, images, [caption_prompt(tokenizer)] * len(images), **options)


def answer_questions(
    model: VLM,
    tokenizer: Tokenizer,
    images: np.ndarray,
    questions: list[str],
    describe: bool = False,
    **options,
) -> list[str]:
    """Answers, batching together the questions whose prompts have one length.

    describe: the model was trained to caption the image before the question
    (qa_format "describe"); it captions each image first and answers after its own
    caption.
    """
    if describe:
        room = model.config.max_len - ANSWER_ROOM
        descriptions = caption_images(model, tokenizer, images, **options)
        prompts = [
            question_prompt(tokenizer, q, d.ids, room)
            for q, d in zip(questions, descriptions, strict=True)
        ]
    else:
        prompts = [question_prompt(tokenizer, q) for q in questions]
    answers: list[str] = [""] * len(questions)
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        for i, result in zip(
            rows,
            generate(model, tokenizer, images[rows], [prompts[i] for i in rows], **options),
            strict=False,
        ):
            answers[i] = result.text
    return answers
