"""Train a small captioner for about a minute on the CPU, then caption scenes it has not seen.

What it teaches: the whole training loop is one call. `train(config)` draws batches of
procedural scenes (one shape per image here), runs the VLM forward and cross_entropy,
calls loss.backward() (every hand-written backward, in reverse graph order), clips the
gradient and steps AdamW. `caption_images` then decodes greedily with a KV cache. The
"heldout" scenes use colour-shape pairs that never appear in training: their captions
show whether the model learned colour and shape apart, or only the pairs it saw.
docs/architecture.md follows one training step through the model and back.

    python examples/train_captioner.py [--steps 300] [--out DIR] [--quick]

The run's checkpoint stays in DIR, ready for `minivlm caption IMAGE --checkpoint DIR`
and for `python examples/attention_maps.py --checkpoint DIR`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from minivlm.data import SceneDataset
from minivlm.generate import caption_images
from minivlm.train import TrainConfig, Trainer, preset, train


def captioner_config(out_dir: str, steps: int, quick: bool) -> TrainConfig:
    """The "tiny" preset, widened to two blocks of width 64 (width 32, one block with --quick)."""
    return preset(
        "tiny",
        out_dir=out_dir,
        steps=steps,
        max_objects=1,
        d_model=32 if quick else 64,
        n_heads=4,
        n_blocks=1 if quick else 2,
        batch_size=8 if quick else 32,
        lr=3e-3,
        warmup_steps=max(1, min(20, steps // 10)),
        log_every=1,
        eval_every=steps,  # validation losses once, at the end
        checkpoint_every=steps,
        progress=not quick,
    )


def show_captions(trainer: Trainer, split: str, count: int, seed: int = 123) -> int:
    """Caption `count` fresh scenes of `split`; print each next to the truth; return # exact."""
    scenes = SceneDataset(
        trainer.config.data,
        split,
        count,
        seed,
        task="caption",
        tokenizer=trainer.tokenizer,
    )
    examples = [scenes[i] for i in range(count)]
    generated = caption_images(
        trainer.model, trainer.tokenizer, np.stack([e.image for e in examples])
    )
    exact = 0
    for example, result in zip(examples, generated, strict=True):
        if result.text == example.caption:
            exact += 1
            print(f"  ok   {result.text}")
        else:
            print(f"       {result.text}\n       (true: {example.caption})")
    return exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (default: a new temp folder)"
    )
    parser.add_argument("--quick", action="store_true", help="a few steps of a smaller model")
    args = parser.parse_args()
    steps = args.steps or (6 if args.quick else 300)
    out = args.out or Path(tempfile.mkdtemp(prefix="minivlm_captioner_"))
    config = captioner_config(str(out), steps, args.quick)

    width = config.model.d_model
    print(f"training a {width}-wide VLM for {steps} steps of {config.batch_size} scenes")
    started = time.perf_counter()
    trainer = train(config)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    final = records[-1]
    print(
        f"trained {trainer.step} steps in {time.perf_counter() - started:.0f} s: loss "
        f"{records[0]['loss']:.2f} -> {final['loss']:.2f}; validation loss iid "
        f"{final['iid_loss']:.2f}, held-out {final['heldout_loss']:.2f}"
    )

    count = 4
    print("\ncaptions of new scenes, colour-shape pairs seen in training (iid):")
    exact = show_captions(trainer, "iid", count)
    print("captions of new scenes, colour-shape pairs never seen (heldout):")
    exact += show_captions(trainer, "heldout", count)
    print(f"\nexact captions: {exact}/{2 * count}")
    print(f"checkpoint: {out} (minivlm caption IMAGE --checkpoint {out})")


if __name__ == "__main__":
    main()
