"""Training: the loop, its config (which nests the model's and the data's), training
checkpoints (weights, optimizer, data stream and random state) and the augmentations."""

from .augment import AttributeCorruption, GreyscaleCaptions
from .checkpoint import (
    NonFiniteError,
    latest_checkpoint,
    load_training_state,
    save_training_checkpoint,
)
from .config import TrainConfig, add_config_arguments, config_from_arguments, preset
from .loop import (
    Trainer,
    length_groups,
    sequence_loss,
    target_weights,
    train,
)
from .run_folder import RunFolderError

__all__ = [
    "AttributeCorruption",
    "GreyscaleCaptions",
    "NonFiniteError",
    "RunFolderError",
    "TrainConfig",
    "Trainer",
    "add_config_arguments",
    "config_from_arguments",
    "latest_checkpoint",
    "length_groups",
    "load_training_state",
    "preset",
    "save_training_checkpoint",
    "sequence_loss",
    "target_weights",
    "train",
]
