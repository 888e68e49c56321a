"""An automatic checker for images of the shapes world.

Per object named in a caption it asks three questions:

- **colour**: are there enough pixels of that hue (hue segmentation against the palette)?
- **position**: is the centroid of that colour in the named region?
- **shape**: does the largest blob of that colour fill its bounding box like the named shape
  (square ≈ 1, circle ≈ π/4, triangle ≈ 1/2)?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLOURS, Target, parse_caption

MIN_SATURATION = 0.35
MIN_VALUE = 0.30
MAX_HUE_DISTANCE = 30.0 / 360.0
MIN_AREA_FRACTION = 0.008  # of the image; the smallest world object covers about 2.4 %
# Fill-ratio thresholds between triangle (0.5), circle (0.785) and square (1.0).
TRIANGLE_BELOW = 0.64
SQUARE_ABOVE = 0.885


def _hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = img.astype(np.float32) / 255.0
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6.0
    return hue % 1.0, sat, mx


_PALETTE_HUES = {name: _hsv(np.array([[rgb]], dtype=np.uint8))[0][0, 0] for name, rgb in COLOURS.items()}


def colour_masks(img: np.ndarray) -> dict[str, np.ndarray]:
    """Segment an image by hue.

    Args:
        img: uint8 array ``[H, W, 3]``.

    Returns:
        colour name → boolean mask ``[H, W]``; each saturated pixel goes to the nearest palette hue
        within 30°, so the masks never overlap.
    """
    hue, sat, val = _hsv(img)
    names = list(_PALETTE_HUES)
    ref = np.array([_PALETTE_HUES[n] for n in names])  # [colour]
    dist = np.abs(hue[..., None] - ref)
    dist = np.minimum(dist, 1.0 - dist)  # circular hue distance, [H, W, colour]
    nearest = dist.argmin(-1)
    ok = (sat >= MIN_SATURATION) & (val >= MIN_VALUE) & (dist.min(-1) <= MAX_HUE_DISTANCE)
    return {n: ok & (nearest == i) for i, n in enumerate(names)}


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (empty mask in, empty mask out)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = current
                    stack.append((yy, xx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


def classify_shape(blob: np.ndarray) -> str | None:
    """Name the shape of a blob from how much of its bounding box it fills (None if empty)."""
    ys, xs = np.nonzero(blob)
    if len(ys) == 0:
        return None
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = len(ys) / box
    if fill < TRIANGLE_BELOW:
        return "triangle"
    return "square" if fill > SQUARE_ABOVE else "circle"


def in_region(cx: float, cy: float, region: str) -> bool:
    """Whether a centroid (fractions of the image) lies in a caption's region."""
    return {
        "left": cx < 0.4,
        "right": cx > 0.6,
        "top": cy < 0.4,
        "bottom": cy > 0.6,
        "center": abs(cx - 0.5) < 0.15 and abs(cy - 0.5) < 0.15,
        "left_half": cx < 0.5,
        "right_half": cx > 0.5,
        "top_half": cy < 0.5,
        "bottom_half": cy > 0.5,
    }[region]


@dataclass(frozen=True)
class ObjectCheck:
    """The checker's verdict on one object named in a caption."""

    target: Target
    colour: bool
    position: bool
    shape: bool
    found_shape: str | None
    centroid: tuple[float, float] | None


def check_image(img: np.ndarray, caption: str) -> list[ObjectCheck]:
    """Check an image against a caption, object by object.

    Args:
        img: uint8 array ``[H, W, 3]`` (or a PIL image).
        caption: a caption of the world's grammar.

    Returns:
        One :class:`ObjectCheck` per object named in the caption.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"img must be an RGB array [H, W, 3], got shape {img.shape}")
    h, w = img.shape[:2]
    masks = colour_masks(img)
    out = []
    for t in parse_caption(caption):
        m = masks[t.colour]
        present = m.sum() >= MIN_AREA_FRACTION * h * w
        if not present:
            out.append(ObjectCheck(t, False, False, False, None, None))
            continue
        ys, xs = np.nonzero(m)
        cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
        found = classify_shape(largest_component(m))
        out.append(ObjectCheck(t, True, in_region(cx, cy, t.region), found == t.shape, found, (float(cx), float(cy))))
    return out


def caption_scores(img: np.ndarray, caption: str) -> dict[str, bool]:
    """Whole-caption verdicts: every named object has the right colour+position / the right shape.

    Returns:
        ``{"colour": ..., "colour_position": ..., "shape": ..., "all": ...}``.
    """
    checks = check_image(img, caption)
    colour = all(c.colour for c in checks)
    cp = all(c.colour and c.position for c in checks)
    shape = all(c.shape for c in checks)
    return {"colour": colour, "colour_position": cp, "shape": shape, "all": cp and shape}
