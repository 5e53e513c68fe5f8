"""VisionEncoder: a ViT without a class token. Images become patch tokens.

images (B, 3, H, W)
  -> patches (B, N, 3 P P)            N = (H/P)(W/P), cut with reshapes only
  -> patch_embedding + position_embedding     (B, N, d)
  -> transformer_layers (TransformerEncoderLayer x n_layers)
  -> norm                              (B, N, d)
"""

from __future__ import annotations

from .. import functional as F
from ..autograd import Tensor
from ..backend import get_array_module
from ..nn import LayerNorm, Linear, Module, ModuleList, Parameter, TransformerEncoderLayer, init
from .config import IMAGE_CHANNELS

# position_embedding ~ N(0, 0.02^2), as ViT and GPT-2 initialise theirs (the reference
# draws N(0, 1); a small start keeps the patch content dominant at first).
POSITION_STD = 0.02


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/P)(W/P), C P P).

    Patches in row-major order over the image, each flattened in (channel, row, column)
    order: exactly torch.nn.functional.unfold(images, P, stride=P).transpose(1, 2).
    """
    batch, channels, height, width = images.shape
    rows, cols, p = height // patch_size, width // patch_size, patch_size
    x = F.reshape(images, (batch, channels, rows, p, cols, p))  # pixel (c, r p + i, s p + j)
    x = F.permute(x, (0, 2, 4, 1, 3, 5))  # (B, rows, cols, C, P, P)
    return F.reshape(x, (batch, rows * cols, channels * p * p))


class VisionEncoder(Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        dropout: float = 0.1,
        ffn_mult: int = 4,
        norm_first: bool = False,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"VisionEncoder: image_size {image_size} is not divisible by "
                f"patch_size {patch_size}"
            )
        self.image_size, self.patch_size = image_size, patch_size
        self.n_patches = (image_size // patch_size) ** 2
        self.patch_embedding = Linear(IMAGE_CHANNELS * patch_size * patch_size, d_model)
        self.position_embedding = Parameter(init.normal((1, self.n_patches, d_model), POSITION_STD))
        self.transformer_layers = ModuleList(
            TransformerEncoderLayer(
                d_model, n_heads, ffn_mult * d_model, dropout, norm_first=norm_first
            )
            for _ in range(n_layers)
        )
        self.norm = LayerNorm(d_model)

    def forward(self, images) -> Tensor:
        """images (B, 3, image_size, image_size), floating -> patch features (B, N, d)."""
        images = self.check_images(images)
        x = self.patch_embedding(patchify(images, self.patch_size)) + self.position_embedding
        for layer in self.transformer_layers:
            x = layer(x)
        return self.norm(x)

    def check_images(self, images) -> Tensor:
        """images as a Tensor in the weights' dtype and device; a clear error if they cannot be."""
        data = images.data if isinstance(images, Tensor) else images
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            raise TypeError(f"images: expected a Tensor or an array, got {type(images).__name__}")
        size = self.image_size
        if data.ndim != 4 or data.shape[1:] != (IMAGE_CHANNELS, size, size):
            raise ValueError(
                f"images: expected shape (B, {IMAGE_CHANNELS}, {size}, {size}), "
                f"got {tuple(data.shape)}"
            )
        if data.dtype.kind != "f":
            raise TypeError(f"images: expected floating pixel values, got dtype {data.dtype}")
        weight = self.patch_embedding.weight
        if not isinstance(images, Tensor):
            xp = get_array_module(weight.data)
            return Tensor(xp.asarray(data, dtype=weight.dtype))
        return F.astype(images.to(weight.device), weight.dtype)

    def extra_repr(self) -> str:
        size, patch = self.image_size, self.patch_size
        return f"image_size={size}, patch_size={patch}, n_patches={self.n_patches}"
