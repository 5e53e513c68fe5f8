"""The data layer: procedural scenes, tokenizers, batches and folder datasets.

It imports only NumPy, Pillow and the standard library, never the engine.
"""

from minivlm.data.batching import IGNORE_INDEX, Batch, Example, collate, image_to_array
from minivlm.data.captions import (
    ObjectSpans,
    ParsedObject,
    caption,
    caption_with_spans,
    parse_caption,
)
from minivlm.data.config import SPLITS, SceneConfig
from minivlm.data.folder import CAPTIONS_FILE, FolderDataError, FolderDataset, FolderRow
from minivlm.data.language import LANGUAGES, Language, get_language, lexicon_texts
from minivlm.data.questions import (
    QA,
    QA_TYPES,
    all_questions,
    answer_space,
    answer_text,
    available_qa_types,
    questions_of_type,
    sample_balanced_qa,
    sample_scene_questions,
)
from minivlm.data.reference import REFERENCE_TEXT, ReferenceData, reference_data, reference_scene
from minivlm.data.render import object_coverage, object_masks, render_scene
from minivlm.data.scene_dataset import QA_FORMATS, SceneDataset, SceneRecord, default_tokenizer
from minivlm.data.scenes import (
    Scene,
    SceneObject,
    is_held_out,
    make_scene,
    sample_scene,
    scene_rng,
)
from minivlm.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from minivlm.data.vocabulary import (
    ALL_PAIRS,
    ATTRIBUTES,
    COLOUR_RGB,
    COLOURS,
    DEFAULT_HELD_OUT_PAIRS,
    GRID,
    SHAPES,
    SIZES,
)

__all__ = [
    "ALL_PAIRS",
    "ATTRIBUTES",
    "CAPTIONS_FILE",
    "COLOURS",
    "COLOUR_RGB",
    "DEFAULT_HELD_OUT_PAIRS",
    "GRID",
    "IGNORE_INDEX",
    "LANGUAGES",
    "QA",
    "QA_TYPES",
    "REFERENCE_TEXT",
    "SHAPES",
    "SIZES",
    "SPECIAL_TOKENS",
    "SPLITS",
    "Batch",
    "Example",
    "FolderDataError",
    "FolderDataset",
    "FolderRow",
    "Language",
    "ObjectSpans",
    "ParsedObject",
    "ReferenceData",
    "Scene",
    "SceneConfig",
    "QA_FORMATS",
    "SceneDataset",
    "SceneObject",
    "SceneRecord",
    "Tokenizer",
    "all_questions",
    "answer_space",
    "answer_text",
    "available_qa_types",
    "caption",
    "caption_with_spans",
    "collate",
    "default_tokenizer",
    "get_language",
    "image_to_array",
    "is_held_out",
    "lexicon_texts",
    "make_scene",
    "object_coverage",
    "object_masks",
    "parse_caption",
    "questions_of_type",
    "reference_data",
    "reference_scene",
    "render_scene",
    "sample_balanced_qa",
    "sample_scene_questions",
    "sample_scene",
    "scene_rng",
]
