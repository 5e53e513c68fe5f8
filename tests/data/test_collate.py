import numpy as np
import pytest
from PIL import Image

from minivlm.data import IGNORE_INDEX, Example, collate, image_to_array


def example(ids, loss_start, size=8, task="caption"):
    return Example(np.zeros((3, size, size), np.float32), tuple(ids), loss_start, task)


def test_collate_shifts_pads_and_masks_padding_and_prompt():
    caption = example([2, 4, 10, 11, 12, 3], loss_start=2)
    qa = example([2, 5, 20, 21, 6, 30, 3], loss_start=5, task="qa")
    batch = collate([caption, qa], pad_id=0)
    assert batch.inputs.dtype == np.int64 and batch.targets.dtype == np.int64
    assert batch.inputs.tolist() == [[2, 4, 10, 11, 12, 0], [2, 5, 20, 21, 6, 30]]
    # caption: <caption> is prompt; 10 11 12 <eos> are trained; the pad column is ignored
    assert batch.targets.tolist() == [
        [IGNORE_INDEX, 10, 11, 12, 3, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 30, 3],
    ]
    assert batch.lengths.tolist() == [5, 6]
    assert batch.images.shape == (2, 3, 8, 8) and batch.images.dtype == np.float32


def test_collate_pads_inputs_with_the_given_pad_id():
    batch = collate([example([2, 4, 9, 3], 2), example([2, 4, 3], 2)], pad_id=7)
    assert batch.inputs[1].tolist() == [2, 4, 7]
    assert batch.targets[1].tolist() == [IGNORE_INDEX, 3, IGNORE_INDEX]


def test_a_sequence_longer_than_max_len_is_named():
    short, long = example([2, 4, 3], 2), example([2, 4, 9, 9, 9, 3], 2)
    collate([short, long], max_len=6)
    with pytest.raises(ValueError, match=r"examples\[1\].*6 tokens.*max_len=5"):
        collate([short, long], max_len=5)


def test_collate_refuses_an_empty_batch_and_mixed_image_sizes():
    with pytest.raises(ValueError, match="at least one"):
        collate([])
    with pytest.raises(ValueError, match=r"examples\[1\]\.image"):
        collate([example([2, 4, 3], 2), example([2, 4, 3], 2, size=4)])


def test_example_refuses_a_loss_start_outside_the_sequence():
    with pytest.raises(ValueError, match="loss_start"):
        example([2, 4, 3], loss_start=3)
    with pytest.raises(ValueError, match="task"):
        example([2, 4, 3], 2, task="chat")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "1", "I", "F", "YCbCr"])
def test_image_to_array_takes_any_mode_to_three_channels_in_minus_one_to_one(mode):
    image = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
    array = image_to_array(image, 16)
    assert array.shape == (3, 16, 16) and array.dtype == np.float32
    assert -1.0 <= array.min() and array.max() <= 1.0


def test_image_to_array_scales_to_minus_one_one():
    array = image_to_array(Image.new("RGB", (4, 4), (0, 255, 51)), 4)
    np.testing.assert_allclose(array[:, 0, 0], [-1.0, 1.0, 51 / 255 * 2 - 1], atol=1e-6)


def test_sixteen_bit_images_use_their_full_range():
    image = Image.fromarray(np.full((6, 6), 65535, dtype=np.uint16))
    assert image.mode.startswith("I")
    np.testing.assert_allclose(image_to_array(image, 4), 1.0, atol=1e-5)
    half = Image.fromarray(np.full((6, 6), 32768, dtype=np.uint16))
    np.testing.assert_allclose(image_to_array(half, 4), 0.0, atol=1e-4)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    np.testing.assert_allclose(image_to_array(image, 4), 1.0)


def test_image_to_array_refuses_non_images_and_bad_sizes():
    with pytest.raises(TypeError, match="PIL"):
        image_to_array(np.zeros((4, 4, 3)), 4)
    with pytest.raises(ValueError, match="image_size"):
        image_to_array(Image.new("RGB", (4, 4)), 0)
