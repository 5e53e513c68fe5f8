"""minivlm.checkpoint: safetensors weights + JSON config, atomic writes, clear mismatches."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from minivlm import checkpoint, random
from minivlm.models import VLM, tiny_config
from minivlm.nn import StateDictError


def inputs(config):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, config.image_size, config.image_size))
    return images, rng.integers(0, config.vocab_size, size=(2, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_then_load_gives_the_same_model(tmp_path, dtype):
    config = tiny_config("gated")
    model = VLM(config).to(dtype=dtype).eval()
    for block in model.vlm_blocks:
        block.cross_gate.data[...] = 0.5
    checkpoint.save_model(model, config, tmp_path / "run")
    loaded = checkpoint.load_model(tmp_path / "run")
    assert loaded.config == config and not loaded.training
    for name, value in model.state_dict().items():
        assert loaded.state_dict()[name].dtype == dtype
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)
    np.testing.assert_array_equal(loaded(*inputs(config)).data, model(*inputs(config)).data)


def test_files_hold_parameter_names_and_the_config(tmp_path):
    config = tiny_config("prefix")
    model = VLM(config)
    checkpoint.save_model(model, config, tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert set(weights) == {name for name, _ in model.named_parameters()}
    assert all(array.dtype == np.float32 for array in weights.values())
    assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
    assert sorted(os.listdir(tmp_path)) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
    ]  # no temporary files left


def test_weights_from_another_configuration_get_every_mismatch_listed(tmp_path):
    small = tiny_config()
    checkpoint.save_model(VLM(small), small, tmp_path)
    wider = small.replace(d_model=12, n_blocks=3, fusion="gated")
    (tmp_path / "config.json").write_text(json.dumps(wider.to_dict()))
    checkpoint.write_manifest(tmp_path)  # a consistent folder, only of another model
    with pytest.raises(StateDictError) as err:
        checkpoint.load_model(tmp_path)
    message = str(err.value)
    assert "wrong shape: token_embedding.weight: got (11, 8), expected (11, 12)" in message
    assert (
        "missing: vlm_blocks.2.norm3.weight" in message
        and "missing: vlm_blocks.0.cross_gate" in message
    )


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    checkpoint.save_weights({"w": np.ones(3, np.float32)}, target)
    before = target.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_weights({"w": np.zeros(3, np.float32)}, target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_loading_does_not_move_the_global_random_stream(tmp_path):
    config = tiny_config()
    checkpoint.save_model(VLM(config), config, tmp_path)
    random.manual_seed(5)
    expected = random.generator().random(3)
    random.manual_seed(5)
    checkpoint.load_model(tmp_path)
    np.testing.assert_array_equal(random.generator().random(3), expected)


def test_missing_checkpoint_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpoint.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        checkpoint.load_model(tmp_path)
