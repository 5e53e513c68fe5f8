import pytest

from minivlm.data import (
    ParsedObject,
    Scene,
    SceneConfig,
    SceneObject,
    caption,
    caption_with_spans,
    get_language,
    make_scene,
    parse_caption,
)

CONFIG = SceneConfig()
TWO = Scene(
    (SceneObject("red", "circle", "small", 0, 0), SceneObject("blue", "square", "large", 1, 1))
)


def test_english_caption_names_objects_in_row_major_order():
    assert (
        caption(TWO) == "a small red circle at the top left and a large blue square in the centre"
    )


def test_chinese_caption_names_objects_in_row_major_order():
    assert caption(TWO, "zh") == "左上角有一个小的红色圆形，中间有一个大的蓝色正方形。"


def test_three_objects_are_joined_with_a_comma_and_and():
    scene = Scene((*TWO.objects, SceneObject("orange", "star", "small", 2, 2)))
    assert caption(scene) == (
        "a small red circle at the top left, a large blue square in the centre "
        "and a small orange star at the bottom right"
    )


def test_attribute_order_reorders_the_words_and_fixes_the_article():
    scene = Scene((SceneObject("orange", "star", "small", 0, 0),))
    assert (
        caption(scene, attribute_order=("colour", "shape", "size"))
        == "an orange star small at the top left"
    )
    assert caption(scene, "zh", ("shape", "colour", "size")) == "左上角有一个星形橙色小的。"


def test_bad_language_or_attribute_order_is_refused():
    with pytest.raises(ValueError, match="language"):
        caption(TWO, "fr")
    with pytest.raises(ValueError, match="attribute_order"):
        caption(TWO, attribute_order=("colour", "shape"))


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize(
    "order", [("size", "colour", "shape"), ("colour", "shape", "size"), ("shape", "size", "colour")]
)
def test_spans_point_at_each_objects_size_colour_and_shape_words(language, order):
    table = get_language(language)
    for index in range(50):
        scene = make_scene(CONFIG, "train", 0, index)
        text, spans = caption_with_spans(scene, language, order)
        assert text == caption(scene, language, order)
        assert len(spans) == len(scene.objects)
        for obj, span in zip(scene.objects, spans, strict=True):
            assert text[slice(*span.colour)] == table.colours[obj.colour]
            assert text[slice(*span.shape)] == table.shapes[obj.shape]
            assert text[slice(*span.size)] == table.sizes[obj.size]


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("order", [("size", "colour", "shape"), ("shape", "colour", "size")])
def test_parse_inverts_the_caption(language, order):
    for split in ("train", "heldout"):
        for index in range(200):
            scene = make_scene(SceneConfig(max_objects=5), split, 1, index)
            expected = [ParsedObject.of(obj) for obj in scene.objects]
            assert parse_caption(caption(scene, language, order), language) == expected


def test_parse_skips_pieces_it_cannot_read_and_keeps_partial_ones():
    text = "a small red circle at the top left, something odd and a blue thing in the center"
    assert parse_caption(text) == [
        ParsedObject("red", "circle", "small", 0, 0),
        ParsedObject("blue", None, None, 1, 1),
    ]


def test_parse_skips_a_piece_that_names_one_attribute_twice():
    assert parse_caption("a red blue circle on the left and a green star") == [
        ParsedObject("green", "star", None, None, None)
    ]


def test_parse_chinese_tolerates_unknown_characters():
    assert parse_caption("左上角好像有一个小的红色圆形，？？。右边有蓝色的星形", "zh") == [
        ParsedObject("red", "circle", "small", 0, 0),
        ParsedObject("blue", "star", None, 1, 2),
    ]
