"""The shapes world and its checker: determinism, grammar, and a checker that can be trusted."""

import numpy as np
import pytest

from explainer.toy.checker import caption_scores, check_image
from explainer.toy.world import COLOURS, SHAPES, Obj, Scene, all_captions, parse_caption, render, sample_scenes


def _np(scenes):
    return (render(scenes).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_scenes_are_deterministic_per_seed_and_stream():
    a = sample_scenes(20, seed=5, stream=3)
    assert a == sample_scenes(20, seed=5, stream=3)
    assert a != sample_scenes(20, seed=5, stream=4)
    assert np.array_equal(_np(a), _np(sample_scenes(20, seed=5, stream=3)))


def test_captions_follow_the_grammar():
    scenes = sample_scenes(300, seed=0)
    forms = {len(parse_caption(s.caption)) for s in scenes}
    assert forms == {1, 2}
    for s in scenes:
        targets = parse_caption(s.caption)
        assert [(t.colour, t.shape) for t in targets] == [(o.colour, o.shape) for o in s.objects]
    assert len(all_captions()) == len(set(all_captions())) == 4 * 3 * 5 + 2 * (4 * 3 * 3 * 3)
    assert parse_caption("a red circle above a blue square")[1].region == "bottom_half"
    assert parse_caption("a yellow triangle in the center")[0].region == "center"


@pytest.mark.parametrize("bad", ["a purple circle on the left", "A red circle on the left", "a red circle", 3])
def test_bad_captions_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        parse_caption(bad)


def test_images_are_64px_light_background_flat_colours():
    img = _np(sample_scenes(8, seed=1))
    assert img.shape == (8, 64, 64, 3)
    corners = img[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.min() > 200  # light neutral background


def test_checker_is_right_on_ground_truth():
    scenes = sample_scenes(400, seed=77)
    imgs = _np(scenes)
    scores = [caption_scores(im, s.caption) for im, s in zip(imgs, scenes)]
    for key in ("colour", "colour_position", "shape", "all"):
        assert np.mean([r[key] for r in scores]) >= 0.98, key


def test_checker_catches_wrong_colour_position_and_shape():
    # A correct scene, then the same image judged against captions that are wrong in one way each.
    scene = Scene("a red circle on the left", (Obj("red", "circle", 0.25, 0.5, 0.16),))
    img = _np([scene])[0]
    assert caption_scores(img, "a red circle on the left")["all"]
    assert not caption_scores(img, "a blue circle on the left")["colour"]
    assert not caption_scores(img, "a red circle on the right")["colour_position"]
    assert not caption_scores(img, "a red square on the left")["shape"]
    assert not caption_scores(img, "a red triangle on the left")["shape"]
    blank = np.full((64, 64, 3), 236, np.uint8)
    assert not any(caption_scores(blank, "a red circle on the left").values())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", list(COLOURS))
def test_checker_names_every_shape_and_colour(shape, colour):
    scene = Scene(f"a {colour} {shape} in the center", (Obj(colour, shape, 0.5, 0.5, 0.14),))
    (check,) = check_image(_np([scene])[0], scene.caption)
    assert check.colour and check.position and check.found_shape == shape
