"""Drawing styles: the ways a scene's shapes can be drawn.

A model trained on one renderer may learn that renderer (its anti-aliased edges, its
star's inner radius) instead of the shapes. A SceneConfig names the styles training
draws from (`styles`, one picked per scene) and one style it never shows
(`held_out_style`), which the "style" split renders: scenes of training pairs, drawn in
a way no training image was. `minivlm eval` reports its per-attribute accuracy.

"plain" is held out in the demo preset: Pillow drawn directly, no anti-aliasing, no
noise, one flat background, a textbook star (inner radius 0.38) and a thin plus (arm
0.2). The demo trains on "soft", "thin" (a cross of arm 0.26) and "aliased" (soft
without anti-aliasing): plain's cross is thinner than any training cross, its star's
inner radius is in no training style, its noiseless background in none, and no training
scene has more than one of its traits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DrawingStyle:
    star_points: int = 5
    star_inner: float = 0.45  # inner / outer radius of the star
    cross_arm: float = 0.38  # half the arm thickness / the half-extent of the cross
    corner: float = 0.0  # a square's corner radius / its half-side (0: sharp corners)
    outline: float = 0.0  # 0: filled; else the stroke width / the half-extent
    supersample: int = 4  # sub-pixels a side averaged per pixel; 1: no anti-aliasing
    noise_scale: float = 1.0  # background noise, times SceneConfig.noise
    background: tuple[int, int] = (16, 64)  # grey level of the background, drawn per scene
    rotation: float = 0.0  # largest rotation of an object, degrees, drawn per object


STYLES: dict[str, DrawingStyle] = {
    "soft": DrawingStyle(),  # the renderer as it always was: every scene before styles
    "outline": DrawingStyle(outline=0.3),
    "sharp": DrawingStyle(supersample=1, noise_scale=0.0),
    "rotated": DrawingStyle(rotation=25.0),
    "spiky": DrawingStyle(star_points=6, star_inner=0.5, cross_arm=0.25),
    "rounded": DrawingStyle(corner=0.4, star_inner=0.35, cross_arm=0.3),
    "bright": DrawingStyle(background=(90, 140), noise_scale=2.0),
    "thin": DrawingStyle(cross_arm=0.26),  # soft with a thinner cross
    "aliased": DrawingStyle(supersample=1),  # soft without anti-aliasing
    "plain": DrawingStyle(
        star_inner=0.38, cross_arm=0.2, supersample=1, noise_scale=0.0, background=(30, 30)
    ),
}
DEFAULT_STYLE = "soft"
