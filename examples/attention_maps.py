"""Draw where each word of a generated caption looks in its image: cross-attention maps.

What it teaches: what the decoder's cross-attention reads. While a caption is generated,
each new token's query attends over the image's N patches, in every block and head;
`caption_images(..., return_attention=True)` keeps those weights, an array
(steps, blocks, heads, N) per image. Averaged over blocks and heads and put back on the
patch grid, they are laid over the image in red, one panel per generated word
(minivlm.viz.attention_grid). For each word the script also prints the share of its
attention that falls on the patches that hold part of the object, next to the share of the image
those patches are: a model that has learned to look scores well above that baseline on
the colour and shape words.

    python examples/attention_maps.py [OUT_DIR] [--checkpoint RUN] [--steps 150] [--quick]

Without --checkpoint it first trains a small captioner briefly (the model of
train_captioner.py) into OUT_DIR/run. The PNGs go to OUT_DIR (default: a new temporary
folder).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from train_captioner import captioner_config

from minivlm.cli.files import load_checkpoint
from minivlm.data import SceneConfig, SceneDataset, Tokenizer, object_masks
from minivlm.generate import caption_images
from minivlm.models import VLM
from minivlm.train import train
from minivlm.viz import array_to_image, attention_grid


def trained_captioner(checkpoint: Path | None, run: Path, steps: int, quick: bool):
    """(model, tokenizer, scene config): from a checkpoint, or trained into `run` for `steps`."""
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint)
        return loaded.model, loaded.tokenizer, loaded.scenes
    print(f"training a small captioner for {steps} steps into {run} (--checkpoint reuses one)")
    trainer = train(captioner_config(str(run), steps, quick))
    return trainer.model, trainer.tokenizer, trainer.config.data


def object_patches(masks: np.ndarray, patch_size: int) -> np.ndarray:
    """(N,) bool: the patches, row-major as in patchify, that hold a pixel of an object."""
    covered = masks.any(axis=0)  # (S, S) bool
    side = covered.shape[0] // patch_size
    return covered.reshape(side, patch_size, side, patch_size).any(axis=(1, 3)).reshape(-1)


def draw_maps(model: VLM, tokenizer: Tokenizer, scenes: SceneConfig, out: Path, count: int) -> None:
    dataset = SceneDataset(scenes, "iid", count, seed=321, task="caption", tokenizer=tokenizer)
    examples = [dataset[i] for i in range(count)]
    generated = caption_images(
        model, tokenizer, np.stack([e.image for e in examples]), return_attention=True
    )
    for index, (example, result) in enumerate(zip(examples, generated, strict=True)):
        tokens = [tokenizer.tokens[t] for t in result.ids]
        maps = result.attention.mean(axis=(1, 2))  # (steps, blocks, heads, N) -> (steps, N)
        on_object = object_patches(
            object_masks(example.scene, scenes.image_size), model.config.patch_size
        )
        path = attention_grid(
            array_to_image(example.image), tokens, maps, out / f"attention_{index}.png"
        )
        print(f"\n{result.text!r} (true: {example.caption!r})")
        print(
            f"  object patches: {on_object.sum()} of {on_object.size} "
            f"({on_object.mean():.0%} of the image); attention on them per word:"
        )
        print(
            "  "
            + "  ".join(f"{tok} {maps[t, on_object].sum():.0%}" for t, tok in enumerate(tokens))
        )
        print(f"  wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="folder for the PNGs")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a run folder to load")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 150)")
    parser.add_argument("--quick", action="store_true", help="a few steps of a smaller model")
    args = parser.parse_args()
    steps = args.steps or (4 if args.quick else 150)
    out = args.out or Path(tempfile.mkdtemp(prefix="minivlm_attention_maps_"))
    model, tokenizer, scenes = trained_captioner(args.checkpoint, out / "run", steps, args.quick)
    draw_maps(model, tokenizer, scenes, out, count=2 if args.quick else 3)


if __name__ == "__main__":
    main()
