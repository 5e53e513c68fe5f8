"""Drawing styles: training scenes draw one of SceneConfig.styles, the "style" and
"heldout-style" splits the held-out one; one style draws the scenes of before styles; bad
names are refused."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from minivlm.data import SceneConfig, object_masks, render_scene
from minivlm.data.scenes import make_scene
from minivlm.data.styles import STYLES


def test_training_scenes_draw_each_style_and_the_style_split_only_the_held_out_one():
    config = SceneConfig(styles=("soft", "outline", "rotated"), held_out_style="plain")
    drawn = Counter(make_scene(config, "train", 0, i).style for i in range(300))
    assert set(drawn) == {"soft", "outline", "rotated"} and min(drawn.values()) > 60
    held = [make_scene(config, "style", 0, i) for i in range(100)]
    assert {scene.style for scene in held} == {"plain"}
    assert all(obj.pair in config.training_pairs for scene in held for obj in scene.objects)
    assert all(obj.angle == 0 for s in held for obj in s.objects)  # plain does not turn
    both = [make_scene(config, "heldout-style", 0, i) for i in range(100)]
    assert {scene.style for scene in both} == {"plain"}
    assert all(any(obj.pair in config.held_out_pairs for obj in s.objects) for s in both)
    turned = [o.angle for i in range(100) for o in make_scene(config, "iid", 0, i).objects]
    assert max(np.abs(turned)) <= STYLES["rotated"].rotation and np.count_nonzero(turned) > 20


@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_draws_every_object_and_its_mask(style):
    config = SceneConfig(image_size=64, max_objects=5, styles=(style,))
    for index in range(10):
        scene = make_scene(config, "train", 3, index)
        image = np.asarray(render_scene(scene, 64), dtype=np.float32)  # (64, 64, 3)
        masks = object_masks(scene, 64)  # (n, 64, 64)
        assert masks.sum(axis=(1, 2)).min() > 0, (style, index)
        for obj, mask in zip(scene.objects, masks, strict=True):
            inside = image[mask].mean(axis=0)  # the object's colour where it covers a pixel
            assert np.abs(inside - image.mean(axis=(0, 1))).max() > 5, (style, obj)


def test_one_style_draws_the_scenes_of_before_styles():
    """No draw is spent on the style when there is one: the scenes stay those of seed s."""
    plain = SceneConfig(styles=("soft",))
    mixed = SceneConfig(styles=("soft", "outline"))
    assert make_scene(plain, "train", 5, 7).style == "soft"
    assert make_scene(plain, "train", 5, 7) != make_scene(mixed, "train", 5, 7)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(styles=("soft", "comic")), "SceneConfig.styles: expected a non-empty list"),
        (dict(styles=()), "SceneConfig.styles: expected a non-empty list"),
        (dict(styles=("soft", "soft")), "each style once"),
        (dict(held_out_style="soft"), "SceneConfig.held_out_style: expected '' or a style"),
        (dict(held_out_style="comic"), "SceneConfig.held_out_style"),
    ],
)
def test_bad_styles_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        SceneConfig(**changes)


@pytest.mark.parametrize("split", ["style", "heldout-style"])
def test_the_style_splits_need_a_held_out_style(split):
    with pytest.raises(ValueError, match=f"split='{split}' needs SceneConfig.held_out_style"):
        make_scene(SceneConfig(), split, 0, 0)
