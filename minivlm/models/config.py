"""VLMConfig: every size and choice of the vision-language model, checked on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# How the image reaches the text:
#   "cross"  cross-attention to the image patches in every block (the reference design)
#   "gated"  the same, with the cross-attention and the MLP after it scaled by tanh of
#            a learned per-block gate that starts at 0 (Flamingo)
#   "prefix" projected patch tokens placed before the text in one causal sequence,
#            blocks without cross-attention (LLaVA-style early fusion)
FUSIONS = ("cross", "gated", "prefix")
# "post": x = norm(x + f(x)) (the reference, PyTorch's default); "pre": x = x + f(norm(x))
NORMS = ("post", "pre")
IMAGE_CHANNELS = 3
COUNTS = (
    "image_size",
    "patch_size",
    "d_model",
    "n_heads",
    "n_encoder_layers",
    "n_blocks",
    "vocab_size",
    "ffn_mult",
    "max_len",
)  # fields that must be positive integers


@dataclass(frozen=True, kw_only=True)
class VLMConfig:
    image_size: int  # images are (3, image_size, image_size)
    patch_size: int  # square patches of patch_size x patch_size pixels
    d_model: int  # width of every token, image and text
    n_heads: int  # attention heads, in the encoder and the blocks
    n_encoder_layers: int  # transformer layers of the vision encoder
    n_blocks: int  # VLM blocks of the text decoder
    vocab_size: int
    ffn_mult: int = 4  # MLP hidden width = ffn_mult * d_model
    encoder_dropout: float = 0.1
    max_len: int = 64  # most text positions
    fusion: str = "cross"
    norm: str = "post"
    # each text position also embeds the token_lags tokens before it, one learned table
    # per lag (see VLM.lagged_embeddings); 0: token and position embeddings only
    token_lags: int = 0

    def __post_init__(self):
        for name in COUNTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VLMConfig: {name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"VLMConfig: image_size {self.image_size} is not divisible by patch_size "
                f"{self.patch_size}; expected a whole number of patches per side"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"VLMConfig: d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                "expected heads of equal width"
            )
        if not 0.0 <= self.encoder_dropout < 1.0:
            raise ValueError(
                f"VLMConfig: encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"VLMConfig: fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.norm not in NORMS:
            raise ValueError(f"VLMConfig: norm must be one of {NORMS}, got {self.norm!r}")
        lags = self.token_lags
        if not isinstance(lags, int) or isinstance(lags, bool) or not 0 <= lags < self.max_len:
            raise ValueError(
                f"VLMConfig: token_lags must be an integer in [0, max_len={self.max_len}), "
                f"got {lags!r}"
            )

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VLMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"VLMConfig.from_dict: unknown fields {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)

    def replace(self, **changes) -> VLMConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def reference(cls, d_model: int = 128, vocab_size: int = 29, **changes) -> VLMConfig:
        """The reference tutorial's model: 224x224 images in 16x16 patches, 4 heads, 2
        encoder layers, 2 blocks, FFN 4d, dropout 0.1 in the encoder, 64 positions.
        With vocab_size 29: 303,197 parameters at d_model 64, 1,065,117 at 128."""
        return cls(
            image_size=224,
            patch_size=16,
            d_model=d_model,
            n_heads=4,
            n_encoder_layers=2,
            n_blocks=2,
            vocab_size=vocab_size,
            ffn_mult=4,
            encoder_dropout=0.1,
            max_len=64,
        ).replace(**changes)


def tiny_config(fusion: str = "cross", norm: str = "post", token_lags: int = 0) -> VLMConfig:
    """A model small enough for finite differences: 8x8 images in 4 patches, width 8."""
    return VLMConfig(
        image_size=8,
        patch_size=4,
        d_model=8,
        n_heads=2,
        n_encoder_layers=1,
        n_blocks=2,
        vocab_size=11,
        ffn_mult=2,
        encoder_dropout=0.0,
        max_len=8,
        fusion=fusion,
        norm=norm,
        token_lags=token_lags,
    )
