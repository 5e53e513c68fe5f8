import pytest

from minivlm.data import (
    COLOURS,
    SHAPES,
    Scene,
    SceneConfig,
    SceneObject,
    is_held_out,
    make_scene,
)
from minivlm.data.vocabulary import SIZE_FRACTION

CONFIG = SceneConfig()


def test_same_seed_and_index_give_the_same_scene():
    assert make_scene(CONFIG, "train", 7, 3) == make_scene(CONFIG, "train", 7, 3)


def test_splits_and_seeds_draw_different_scenes():
    scenes = [make_scene(CONFIG, split, seed, 0) for split in ("train", "iid") for seed in (0, 1)]
    assert len(set(scenes)) == 4


def test_scenes_have_one_to_max_objects_each_in_its_own_cell():
    config = SceneConfig(max_objects=5)
    counts = set()
    for index in range(300):
        scene = make_scene(config, "train", 0, index)
        cells = [obj.cell for obj in scene.objects]
        assert len(set(cells)) == len(cells)
        assert cells == sorted(cells), "objects must be in row-major cell order"
        counts.add(len(cells))
    assert counts == {1, 2, 3, 4, 5}


def test_training_scenes_never_hold_a_held_out_pair_but_show_every_colour_and_shape():
    colours, shapes = set(), set()
    for index in range(2000):
        for obj in make_scene(CONFIG, "train", 0, index).objects:
            assert not is_held_out(obj, CONFIG), f"scene {index} holds held-out {obj.pair}"
            colours.add(obj.colour)
            shapes.add(obj.shape)
    assert colours == set(COLOURS)
    assert shapes == set(SHAPES)


def test_iid_scenes_never_hold_a_held_out_pair():
    for index in range(500):
        assert not any(is_held_out(o, CONFIG) for o in make_scene(CONFIG, "iid", 0, index).objects)


def test_heldout_scenes_hold_at_least_one_held_out_pair():
    seen = set()
    for index in range(500):
        held = [
            o.pair
            for o in make_scene(CONFIG, "heldout", 0, index).objects
            if is_held_out(o, CONFIG)
        ]
        assert held, f"heldout scene {index} has no held-out pair"
        seen.update(held)
    assert seen == set(CONFIG.held_out_pairs)


def test_jitter_keeps_objects_inside_their_cells():
    config = SceneConfig(jitter=0.5)
    for index in range(200):
        for obj in make_scene(config, "train", 0, index).objects:
            assert max(abs(obj.dx), abs(obj.dy)) <= (1 - SIZE_FRACTION[obj.size]) / 2


def test_unknown_split_and_negative_seed_are_refused():
    with pytest.raises(ValueError, match="split"):
        make_scene(CONFIG, "test", 0, 0)
    with pytest.raises(ValueError, match="seed"):
        make_scene(CONFIG, "train", -1, 0)


def test_bad_scene_records_are_refused():
    with pytest.raises(ValueError, match="colour"):
        SceneObject("pink", "circle", "small", 0, 0)
    with pytest.raises(ValueError, match="row"):
        SceneObject("red", "circle", "small", 3, 0)
    with pytest.raises(ValueError, match="one object per cell"):
        Scene(
            (SceneObject("red", "circle", "small", 0, 0), SceneObject("red", "star", "small", 0, 0))
        )
    with pytest.raises(ValueError, match="dx"):
        SceneObject("red", "circle", "large", 0, 0, dx=0.3)


def test_scene_orders_objects_by_cell():
    scene = Scene(
        (SceneObject("red", "star", "small", 2, 0), SceneObject("blue", "star", "small", 0, 1))
    )
    assert [o.cell for o in scene.objects] == [(0, 1), (2, 0)]
