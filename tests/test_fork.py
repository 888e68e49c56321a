"""Trace.fork: a branch shares the parent's steps bit for bit and continues with the new settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

import explainer
from explainer.tracing.fork import fork

PROMPT = "a red cube beside a blue sphere"
STEPS = 5


def run(pipe, prompt=PROMPT, scheduler="ddim", dtype="float16", **kw):
    return explainer.trace(pipe, prompt, num_inference_steps=STEPS, scheduler=scheduler, progress=False,
                           record={"dtype": dtype}, **kw)  # fmt: skip


def same_run(a, b, *, start: int = 0) -> None:
    """Every recorded array from ``start`` on, and the final image, are identical."""
    assert np.array_equal(a.latents[start:], b.latents[start:])
    assert np.array_equal(a.x0[start:], b.x0[start:])
    assert np.array_equal(a.eps_cond[start:], b.eps_cond[start:])
    assert np.array_equal(a.eps_uncond[start:], b.eps_uncond[start:])
    assert sorted(a.attention) == sorted(b.attention)
    for key in a.attention:
        assert np.array_equal(a.attention[key][start:], b.attention[key][start:]), key
    assert np.array_equal(np.asarray(a.final_image), np.asarray(b.final_image))


@pytest.mark.parametrize(
    ("scheduler", "dtype", "prefix"),
    [
        ("ddim", "float32", "restored"),
        ("ddim", "float16", "recomputed"),  # the stored latent is not the exact state
        ("euler", "float32", "restored"),
        ("euler_a", "float32", "recomputed"),  # ancestral: the generator's state at k is not in the trace
        ("dpm++", "float32", "recomputed"),  # multistep: history of model outputs
        ("pndm", "float16", "recomputed"),
    ],
)
def test_unchanged_fork_reproduces_the_parent(pipe, scheduler, dtype, prefix):
    parent = run(pipe, scheduler=scheduler, dtype=dtype)
    k = 2
    child = parent.fork(k, pipe=pipe, progress=False)
    assert child.metadata["fork"]["prefix"] == prefix
    assert child.num_steps == parent.num_steps
    same_run(child, parent)
    assert child.timesteps.tolist() == parent.timesteps.tolist()


def test_fork_at_zero_with_a_new_prompt_is_a_fresh_run(pipe):
    parent = run(pipe)
    child = parent.fork(0, prompt="a green cube beside a blue sphere", pipe=pipe, progress=False)
    fresh = run(pipe, prompt="a green cube beside a blue sphere")
    same_run(child, fresh)
    assert child.prompt == fresh.prompt and child.tokens == fresh.tokens


def test_new_prompt_keeps_the_prefix_and_both_paths_agree(pipe):
    new = "a green cube beside a blue sphere"
    exact = run(pipe, dtype="float32")  # DDIM + float32: restored
    rounded = run(pipe, dtype="float16")  # recomputed
    k = 2
    a = exact.fork(k, prompt=new, pipe=pipe, progress=False)
    b = rounded.fork(k, prompt=new, pipe=pipe, progress=False)
    assert (a.metadata["fork"]["prefix"], b.metadata["fork"]["prefix"]) == ("restored", "recomputed")
    assert np.array_equal(a.latents[: k + 1], exact.latents[: k + 1])  # latents[k] is the input of step k
    assert np.array_equal(b.latents[: k + 1], rounded.latents[: k + 1])
    assert not np.array_equal(a.latents[-1], exact.latents[-1])  # the new prompt took
    assert np.array_equal(a.latents.astype(np.float16), b.latents)  # the two ways compute the same run
    assert np.array_equal(np.asarray(a.final_image), np.asarray(b.final_image))
    assert a.prompt == new and a.tokens == b.tokens


def test_new_seed_gives_fresh_noise_from_the_fork_step(pipe):
    exact = run(pipe, scheduler="euler_a", dtype="float32")
    rounded = run(pipe, scheduler="euler_a", dtype="float16")
    k = 3
    a = exact.fork(k, seed=7, pipe=pipe, progress=False)
    b = rounded.fork(k, seed=7, pipe=pipe, progress=False)
    assert (a.metadata["fork"]["prefix"], b.metadata["fork"]["prefix"]) == ("restored", "recomputed")
    assert np.array_equal(a.latents[: k + 1], exact.latents[: k + 1])
    assert not np.array_equal(a.latents[-1], exact.latents[-1])
    assert np.array_equal(a.latents.astype(np.float16), b.latents)
    assert a.metadata["seed"] == 7


def test_new_guidance_from_the_fork_step(pipe):
    exact = run(pipe, dtype="float32", guidance_scale=7.5)
    rounded = run(pipe, dtype="float16", guidance_scale=7.5)
    a = exact.fork(2, guidance_scale=2.0, pipe=pipe, progress=False)
    b = rounded.fork(2, guidance_scale=2.0, pipe=pipe, progress=False)
    assert np.array_equal(a.latents.astype(np.float16), b.latents)
    assert a.guidance_scale == b.guidance_scale == 2.0
    assert not np.array_equal(a.latents[-1], exact.latents[-1])


def test_lineage_is_kept_and_saved(pipe, tmp_path):
    parent = run(pipe, dtype="float32")
    child = parent.fork(1, prompt="a green cube", guidance_scale=3.0, pipe=pipe, progress=False)
    lineage = child.metadata["fork"]
    assert lineage["parent_uid"] == parent.uid and child.uid != parent.uid
    assert lineage["step"] == 1
    assert lineage["changed"] == {"prompt": "a green cube", "guidance_scale": 3.0}
    assert lineage["parent"]["prompt"] == PROMPT
    loaded = explainer.load_trace(child.save(tmp_path / "fork.safetensors"))
    assert loaded.metadata["fork"]["parent_uid"] == parent.uid
    assert np.array_equal(loaded.latents, child.latents)


def test_fork_errors(pipe, basic_trace):
    n = basic_trace.num_steps
    with pytest.raises(ValueError, match=rf"step={n} is out of range.*0\.\.{n - 1}"):
        basic_trace.fork(n, pipe=pipe)
    with pytest.raises(ValueError, match="step=-1 is out of range"):
        basic_trace.fork(-1, pipe=pipe)
    with pytest.raises(TypeError, match="step must be an int"):
        basic_trace.fork(1.5, pipe=pipe)
    with pytest.raises(ValueError, match="turns classifier-free guidance off"):
        basic_trace.fork(1, guidance_scale=1.0, pipe=pipe)
    with pytest.raises(ValueError, match="scheduler= at a fork needs the parent's latent"):
        basic_trace.fork(1, scheduler="euler", pipe=pipe)
    with pytest.raises(ValueError, match="seed=-3"):
        basic_trace.fork(1, seed=-3, pipe=pipe)
    with pytest.raises(TypeError, match="fork needs a Trace"):
        fork("run.safetensors", 1, pipe=pipe)
    with pytest.raises(TypeError, match="callback_on_step_end must be a function"):
        explainer.trace(pipe, PROMPT, num_inference_steps=2, callback_on_step_end=3, progress=False)


def test_new_scheduler_from_the_fork_step(pipe):
    parent = run(pipe, scheduler="euler", dtype="float32")
    child = parent.fork(2, scheduler="euler_a", seed=1, pipe=pipe, progress=False)
    assert child.metadata["fork"]["prefix"] == "restored"
    assert child.metadata["scheduler"]["class"] == "EulerAncestralDiscreteScheduler"
    assert np.array_equal(child.latents[:3], parent.latents[:3])
    with pytest.raises(ValueError, match="another space"):
        parent.fork(2, scheduler="ddim", pipe=pipe)


def test_commitment_scores_and_figures(pipe, basic_trace):
    from explainer import views

    new = "a green cube beside a blue sphere"
    calls = []

    def score(image, prompt):  # a stand-in for the toy checker: how far the image moved from the parent's
        calls.append(prompt)
        moved = np.abs(np.asarray(image, np.float32) - np.asarray(basic_trace.final_image, np.float32)).mean()
        return 1.0 if prompt == new and moved > 0 else 0.0

    data = views.commitment_scores(basic_trace, new, steps=[0, 2], pipe=pipe, score=score)
    assert data["steps"] == [0, 2] and len(data["images"]) == 2 and data["old"] == [0.0, 0.0]
    assert data["new"][0] == 1.0  # a fork at 0 is a fresh run of the new prompt
    assert sorted(set(calls)) == sorted({new, basic_trace.prompt})
    fig = views.commitment_curve(basic_trace, new, scores=data)
    assert len(fig.axes) == 3
    child = basic_trace.fork(1, prompt=new, pipe=pipe, progress=False)
    assert "fork at step 1" in views.branches(basic_trace, child).axes[1].get_title()
    with pytest.raises(ValueError, match="the default score is the toy checker"):
        views.commitment_scores(basic_trace, new, pipe=pipe)


def _edit_inputs(size: int = 32):
    """A smooth picture and a left-half mask (the repainted region), the size of the tiny pipeline's images."""
    yy, xx = np.mgrid[0:1 : size * 1j, 0:1 : size * 1j]
    rgb = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (xx * (1 + c) + yy) + c) for c in range(3)], -1)
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255
    return Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB"), Image.fromarray(mask, "L")


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_edit_traces_fork_by_making_the_run_again(pipe, mode):
    image, mask = _edit_inputs()
    extra = {"image": image, "strength": 0.8, **({"mask": mask} if mode == "inpaint" else {})}
    parent = run(pipe, dtype="float32", **extra)
    assert parent.mode == mode
    k = 1
    same = parent.fork(k, pipe=pipe, progress=False)
    assert same.metadata["fork"]["prefix"] == "recomputed" and mode in same.metadata["fork"]["reason"]
    same_run(same, parent)  # nothing changed: the parent's run, bit for bit
    assert same.mode == mode and np.array_equal(same.input_image, parent.input_image)
    new = parent.fork(k, prompt="a green cube beside a blue sphere", pipe=pipe, progress=False)
    assert np.array_equal(new.latents[: k + 1], parent.latents[: k + 1])
    assert not np.array_equal(new.latents[-1], parent.latents[-1])
    with pytest.raises(ValueError, match=f"scheduler= at a fork needs the restored way.*a {mode} fork is made again"):
        parent.fork(k, scheduler="euler", pipe=pipe)
    stripped = copy.copy(parent)
    stripped.input_image = None
    with pytest.raises(ValueError, match=f"a fork of a {mode} trace makes the run again from its input image"):
        stripped.fork(k, pipe=pipe)
