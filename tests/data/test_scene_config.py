import pytest

from minivlm.data import COLOURS, SHAPES, SceneConfig


def test_default_config_holds_out_six_pairs_and_keeps_the_rest():
    config = SceneConfig()
    assert len(config.held_out_pairs) == 6
    assert len(config.training_pairs) == len(COLOURS) * len(SHAPES) - 6


def test_lists_are_turned_into_tuples():
    config = SceneConfig(
        held_out_pairs=[["red", "circle"]], attribute_order=["colour", "shape", "size"]
    )
    assert config.held_out_pairs == (("red", "circle"),)
    assert config.attribute_order == ("colour", "shape", "size")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"image_size": 8}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"max_objects": 0}, "max_objects"),
        ({"max_objects": 10}, "max_objects"),
        ({"jitter": -0.1}, "jitter"),
        ({"noise": "loud"}, "noise"),
        ({"language": "fr"}, "language"),
        ({"attribute_order": ("size", "colour")}, "attribute_order"),
        ({"attribute_order": ("size", "size", "shape")}, "attribute_order"),
        ({"held_out_pairs": (("pink", "circle"),)}, "held_out_pairs"),
        ({"held_out_pairs": (("red", "circle"), ("red", "circle"))}, "held_out_pairs"),
        ({"held_out_pairs": (("red",),)}, "held_out_pairs"),
    ],
)
def test_bad_config_raises_an_error_naming_the_field(kwargs, named):
    with pytest.raises(ValueError, match=named):
        SceneConfig(**kwargs)


def test_holding_out_every_shape_of_a_colour_is_refused():
    pairs = tuple(("red", shape) for shape in SHAPES)
    with pytest.raises(ValueError, match="every shape of colour 'red'"):
        SceneConfig(held_out_pairs=pairs)


def test_holding_out_every_colour_of_a_shape_is_refused():
    pairs = tuple((colour, "star") for colour in COLOURS)
    with pytest.raises(ValueError, match="every colour of shape 'star'"):
        SceneConfig(held_out_pairs=pairs)
