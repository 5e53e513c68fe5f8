import numpy as np
import pytest

from minivlm.data import (
    COLOUR_RGB,
    SHAPES,
    Scene,
    SceneConfig,
    SceneObject,
    make_scene,
    object_masks,
    reference_data,
    render_scene,
)

CONFIG = SceneConfig()


def test_same_scene_renders_to_the_same_bytes():
    scene = make_scene(CONFIG, "train", 3, 11)
    first, second = render_scene(scene, 64), render_scene(scene, 64)
    assert first.mode == "RGB" and first.size == (64, 64)
    assert first.tobytes() == second.tobytes()


def test_mask_pixels_have_the_object_colour_and_the_rest_is_background():
    for index in range(40):
        scene = make_scene(CONFIG, "train", 0, index)
        pixels = np.asarray(render_scene(scene, 64), dtype=np.float64)  # (64, 64, 3)
        masks = object_masks(scene, 64)
        assert masks.shape == (len(scene.objects), 64, 64) and masks.dtype == bool
        for obj, mask in zip(scene.objects, masks, strict=True):
            assert mask.any(), f"{obj} has an empty mask"
            error = np.abs(pixels[mask] - COLOUR_RGB[obj.colour]).mean()
            assert error < 25, (
                f"{obj}: mask pixels differ from its colour by {error:.1f} on average"
            )
        background = ~masks.any(0)
        mean_background = pixels[background].mean()
        assert abs(mean_background - scene.background) < 8


def test_masks_of_different_objects_do_not_overlap():
    for index in range(40):
        masks = object_masks(make_scene(SceneConfig(max_objects=9), "train", 0, index), 64)
        assert masks.sum(0).max() <= 1


def test_large_objects_cover_more_than_small_ones_and_stay_in_their_cell():
    cell = 64 / 3
    for shape in SHAPES:
        small, large = (
            object_masks(Scene((SceneObject("red", shape, size, 1, 1),)), 64)[0]
            for size in ("small", "large")
        )
        assert large.sum() > 2 * small.sum(), shape
        rows, cols = np.nonzero(large)
        assert rows.min() >= int(cell) and rows.max() < int(2 * cell) + 1, shape
        assert cols.min() >= int(cell) and cols.max() < int(2 * cell) + 1, shape


def test_shapes_are_distinguishable_at_64_pixels():
    masks = [object_masks(Scene((SceneObject("red", s, "large", 1, 1),)), 64)[0] for s in SHAPES]
    for i in range(len(SHAPES)):
        for j in range(i + 1, len(SHAPES)):
            differing = np.logical_xor(masks[i], masks[j]).sum()
            assert differing > 20, f"{SHAPES[i]} and {SHAPES[j]} differ in {differing} pixels only"


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError, match="image_size"):
        render_scene(make_scene(CONFIG), 0)


def test_reference_preset_is_a_red_square_centred_on_plain_white_with_chinese_text():
    reference = reference_data()
    pixels = np.asarray(reference.image)
    assert reference.image.size == (224, 224)
    assert tuple(pixels[112, 112]) == COLOUR_RGB["red"]
    assert tuple(pixels[5, 5]) == (255, 255, 255)
    red = np.all(pixels == COLOUR_RGB["red"], axis=-1)
    rows, cols = np.nonzero(red)
    assert abs((rows.min() + rows.max()) / 2 - 111.5) <= 1
    assert abs((cols.min() + cols.max()) / 2 - 111.5) <= 1
    assert "红色" in reference.text and "正方形" in reference.text
    assert reference_data().image.tobytes() == reference.image.tobytes()


@pytest.mark.parametrize("image_size", [24, 64, 100, 224])
@pytest.mark.parametrize("style", ["soft", "rotated", "outline", "sharp", "rounded"])
def test_coverage_drawn_in_a_box_around_each_object_equals_drawing_the_whole_image(
    image_size, style
):
    """Each object is drawn on a canvas only a pixel wider than its outline (turned ones
    included); the same object drawn on a canvas of the whole (supersampled) image covers
    the same pixels by the same amounts, and nothing outside that box."""
    from PIL import Image, ImageDraw

    from minivlm.data import object_coverage
    from minivlm.data.render import GRID, _draw_shape
    from minivlm.data.styles import STYLES

    config = SceneConfig(image_size=image_size, max_objects=5, styles=(style,))
    scale = STYLES[style].supersample
    big = image_size * scale
    for index in range(30):
        scene = make_scene(config, "train", 1, index)
        for obj, coverage in zip(scene.objects, object_coverage(scene, image_size), strict=True):
            canvas = Image.new("L", (big, big), 0)
            _draw_shape(ImageDraw.Draw(canvas), obj, big / GRID, (0, 0), STYLES[style])
            whole = np.asarray(canvas.reduce(scale) if scale > 1 else canvas, np.float32) / 255
            np.testing.assert_array_equal(coverage, whole)
