"""The reference tutorial's data: one red square in the middle of a plain white image,
and one paragraph of Chinese describing it."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from minivlm.data.render import render_scene
from minivlm.data.scenes import Scene, SceneObject

REFERENCE_IMAGE_SIZE = 224
REFERENCE_TEXT = (
    "这是一张白色背景的图片。图片的正中间有一个红色的正方形，"
    "它的四条边一样长，四个角都是直角。"
    "正方形的颜色很鲜艳，和白色的背景对比分明。"
    "除了这个红色的正方形，图片里没有别的东西。"
)


@dataclass(frozen=True)
class ReferenceData:
    image: Image.Image
    text: str
    scene: Scene


def reference_scene() -> Scene:
    """A large red square in the centre cell, on plain white with no noise."""
    return Scene((SceneObject("red", "square", "large", 1, 1),), background=255, noise=0.0)


def reference_data(image_size: int = REFERENCE_IMAGE_SIZE) -> ReferenceData:
    """The fixed image (image_size x image_size) and its Chinese paragraph."""
    scene = reference_scene()
    return ReferenceData(render_scene(scene, image_size), REFERENCE_TEXT, scene)
