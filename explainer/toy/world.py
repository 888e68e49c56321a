"""The shapes world: scenes, captions and a deterministic renderer.

The same code draws the training data and the evaluation scenes. A scene holds one or two
flat-coloured objects on a plain light background, and its caption follows a fixed grammar::

    a {colour} {shape} on the left | on the right | at the top | at the bottom | in the center
    a {c1} {s1} and a {c2} {s2}      # object 1 in the left half, object 2 in the right half
    a {c1} {s1} above a {c2} {s2}    # object 1 in the top half, object 2 in the bottom half

Two-object scenes use two different colours, so that each object is identified by its colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLACES: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom", "in the center")
BACKGROUND: tuple[int, int, int] = (236, 234, 228)
IMAGE_SIZE = 64
FORMS: tuple[str, ...] = ("single", "and", "above")
FORM_WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.3)

# Where each place puts an object's centre: (x range, y range) as fractions of the image.
_SINGLE_BOXES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "on the left": ((0.20, 0.30), (0.38, 0.62)),
    "on the right": ((0.70, 0.80), (0.38, 0.62)),
    "at the top": ((0.38, 0.62), (0.20, 0.30)),
    "at the bottom": ((0.38, 0.62), (0.70, 0.80)),
    "in the center": ((0.44, 0.56), (0.44, 0.56)),
}
_SINGLE_SIZE = (0.13, 0.18)  # half-extent of a lone object, as a fraction of the image side
_PAIR_SIZE = (0.11, 0.15)


@dataclass(frozen=True)
class Obj:
    """One object: its colour, shape, centre (x, y in [0, 1]) and half-extent (fraction of the side)."""

    colour: str
    shape: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    """A caption and the objects it describes (in caption order)."""

    caption: str
    objects: tuple[Obj, ...]


@dataclass(frozen=True)
class Target:
    """What a caption asks of one object: colour, shape and region.

    ``region`` is one of ``left``, ``right``, ``top``, ``bottom``, ``center`` (single-object captions)
    or ``left_half``, ``right_half``, ``top_half``, ``bottom_half`` (two-object captions).
    """

    colour: str
    shape: str
    region: str


_COL = "|".join(COLOURS)
_SHP = "|".join(SHAPES)
_SINGLE_RE = re.compile(rf"^a ({_COL}) ({_SHP}) (on the left|on the right|at the top|at the bottom|in the center)$")
_PAIR_RE = re.compile(rf"^a ({_COL}) ({_SHP}) (and|above) a ({_COL}) ({_SHP})$")
_PLACE_REGION = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
}


def parse_caption(caption: str) -> tuple[Target, ...]:
    """Parse a caption of the world's grammar into the targets it names.

    Args:
        caption: e.g. ``"a red circle above a blue square"``.

    Returns:
        One :class:`Target` per object, in caption order.

    Raises:
        ValueError: when the caption does not follow the grammar.
    """
    m = _SINGLE_RE.match(caption)
    if m:
        return (Target(m.group(1), m.group(2), _PLACE_REGION[m.group(3)]),)
    m = _PAIR_RE.match(caption)
    if m:
        r1, r2 = ("left_half", "right_half") if m.group(3) == "and" else ("top_half", "bottom_half")
        return (Target(m.group(1), m.group(2), r1), Target(m.group(4), m.group(5), r2))
    raise ValueError(
        f"caption={caption!r} does not follow the shapes-world grammar: 'a {{colour}} {{shape}} {{place}}', "
        f"'a {{c1}} {{s1}} and a {{c2}} {{s2}}' or 'a {{c1}} {{s1}} above a {{c2}} {{s2}}' with colours "
        f"{list(COLOURS)}, shapes {list(SHAPES)}, places {list(PLACES)}"
    )


def all_captions() -> list[str]:
    """Every caption of the grammar (two-object captions use two different colours)."""
    caps = [f"a {c} {s} {p}" for c in COLOURS for s in SHAPES for p in PLACES]
    for rel in ("and", "above"):
        caps += [
            f"a {c1} {s1} {rel} a {c2} {s2}"
            for c1 in COLOURS
            for s1 in SHAPES
            for c2 in COLOURS
            for s2 in SHAPES
            if c1 != c2
        ]
    return caps


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one random scene (layout and caption) from ``rng``."""
    form = FORMS[rng.choice(len(FORMS), p=FORM_WEIGHTS)]
    colours = list(COLOURS)
    if form == "single":
        colour = colours[rng.integers(len(colours))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        place = PLACES[rng.integers(len(PLACES))]
        (x0, x1), (y0, y1) = _SINGLE_BOXES[place]
        obj = Obj(colour, shape, rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(*_SINGLE_SIZE))
        return Scene(f"a {colour} {shape} {place}", (obj,))
    i, j = rng.choice(len(colours), size=2, replace=False)
    s1, s2 = SHAPES[rng.integers(len(SHAPES))], SHAPES[rng.integers(len(SHAPES))]
    if form == "and":
        a = Obj(colours[i], s1, rng.uniform(0.20, 0.32), rng.uniform(0.30, 0.70), rng.uniform(*_PAIR_SIZE))
        b = Obj(colours[j], s2, rng.uniform(0.68, 0.80), rng.uniform(0.30, 0.70), rng.uniform(*_PAIR_SIZE))
    else:
        a = Obj(colours[i], s1, rng.uniform(0.30, 0.70), rng.uniform(0.20, 0.32), rng.uniform(*_PAIR_SIZE))
        b = Obj(colours[j], s2, rng.uniform(0.30, 0.70), rng.uniform(0.68, 0.80), rng.uniform(*_PAIR_SIZE))
    return Scene(f"a {a.colour} {a.shape} {form} a {b.colour} {b.shape}", (a, b))


def sample_scenes(n: int, seed: int, stream: int = 0) -> list[Scene]:
    """Draw ``n`` scenes deterministically from ``(seed, stream)``.

    Args:
        n: number of scenes.
        seed: base seed.
        stream: a sub-stream index (e.g. the training step), so that any batch can be redrawn alone.

    Returns:
        A list of :class:`Scene`.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
    return [sample_scene(rng) for _ in range(n)]


_SHAPE_IDS = {name: i for i, name in enumerate(SHAPES)}


def scene_tensors(scenes: list[Scene], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Pack scenes as per-slot tensors for the batched renderer.

    Returns:
        ``present/shape [N, K]``, ``cx/cy/size [N, K]`` and ``rgb [N, K, 3]`` with K the most objects in a scene.
    """
    k = max(len(s.objects) for s in scenes)
    n = len(scenes)
    present = np.zeros((n, k), dtype=bool)
    shape = np.zeros((n, k), dtype=np.int64)
    geo = np.zeros((3, n, k), dtype=np.float32)
    rgb = np.zeros((n, k, 3), dtype=np.float32)
    for i, s in enumerate(scenes):
        for j, o in enumerate(s.objects):
            present[i, j] = True
            shape[i, j] = _SHAPE_IDS[o.shape]
            geo[:, i, j] = (o.cx, o.cy, o.size)
            rgb[i, j] = COLOURS[o.colour]
    t = {"present": present, "shape": shape, "cx": geo[0], "cy": geo[1], "size": geo[2], "rgb": rgb / 255.0}
    return {name: torch.from_numpy(np.ascontiguousarray(v)).to(device) for name, v in t.items()}


def _object_masks(p: dict[str, torch.Tensor], big: int, device: str | torch.device) -> torch.Tensor:
    """``[N, K, big, big]`` bool: where each object slot of packed scenes lies."""
    n = p["present"].shape[0]
    coords = (torch.arange(big, device=device, dtype=torch.float32) + 0.5) / big
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: rows (y), u: columns (x), [big, big]
    out = []
    for j in range(p["present"].shape[1]):
        cx, cy, r = (p[name][:, j].view(n, 1, 1) for name in ("cx", "cy", "size"))
        du, dv = u - cx, v - cy  # [N, big, big]
        circle = du * du + dv * dv <= r * r
        h = r * 0.9
        square = (du.abs() <= h) & (dv.abs() <= h)
        t = (dv + r) / (2 * r)  # upward triangle: 0 at the apex (top centre), 1 at the base
        triangle = (t >= 0) & (t <= 1) & (du.abs() <= r * t)
        masks = torch.stack([circle, square, triangle], 1)  # [N, shape, big, big], same order as SHAPES
        mask = masks.gather(1, p["shape"][:, j].view(n, 1, 1, 1).expand(n, 1, big, big))[:, 0]  # [N, big, big]
        out.append(mask & p["present"][:, j].view(n, 1, 1))
    return torch.stack(out, 1)


def render(
    scenes: list[Scene],
    size: int = IMAGE_SIZE,
    supersample: int = 2,
    device: str | torch.device = "cpu",
    masks: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Render scenes as images, all at once.

    Args:
        scenes: the scenes to draw.
        size: output side in pixels.
        supersample: anti-aliasing factor (each pixel averages ``supersample**2`` samples).
        device: where to render.
        masks: also return each object's coverage.

    Returns:
        float tensor ``[N, 3, size, size]`` in ``[0, 1]``; with ``masks``, also ``[N, K, size, size]``
        coverage in ``[0, 1]`` per object slot (K: the most objects in a scene; empty slots are 0).
    """
    if not scenes:
        img = torch.zeros(0, 3, size, size, device=device)
        return (img, torch.zeros(0, 0, size, size, device=device)) if masks else img
    p = scene_tensors(scenes, device)
    n, big = len(scenes), size * supersample
    obj = _object_masks(p, big, device)  # [N, K, big, big]
    bg = torch.tensor(BACKGROUND, device=device, dtype=torch.float32) / 255.0
    img = bg.view(1, 3, 1, 1).expand(n, 3, big, big).clone()  # [N, 3, big, big]
    for j in range(obj.shape[1]):  # later objects are drawn over earlier ones
        img = torch.where(obj[:, j : j + 1], p["rgb"][:, j].view(n, 3, 1, 1), img)
    cover = obj.float()
    if supersample > 1:
        img = torch.nn.functional.avg_pool2d(img, supersample)
        cover = torch.nn.functional.avg_pool2d(cover, supersample)
    return (img, cover) if masks else img


def render_pil(scene: Scene, size: int = IMAGE_SIZE):
    """Render one scene as a PIL image."""
    from PIL import Image

    arr = (render([scene], size)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)
