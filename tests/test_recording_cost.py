"""What the recorder adds to each UNet call, counted (not timed): kernel-launching ops and host reads.

On a GPU the UNet is close to launch-bound, so these counts are what the recording costs there
(``benchmarks/trace_ops.py`` reports them for the SD 1.x and SDXL layouts). The bounds follow from the
design: per step, one copy of each array a step stores, x0 from its formula, one reduction for the
finiteness check; per group of same-shaped attention layers, two stacks (q, k), one scaled matmul,
a softmax, a head mean and one float16 copy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _opcount import OpCounter

import explainer
from explainer.tracing.recorder import Recorder

PROMPT = "a red circle"
STEPS = 4
PER_STEP = 10  # latent, x0, two model outputs copied; x0 = a * x_t + b * eps (<= 5 ops); one reduction
PER_GROUP = 6  # stack q, stack k, baddbmm, softmax, mean, float16 copy


def _loop_counts(pipe, record: str | None) -> OpCounter:
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=7.5)
    with OpCounter(pipe) as counter:
        if record is None:
            pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs)
        else:
            explainer.trace(pipe, PROMPT, seed=0, record=record, progress=False, scheduler="ddim", **kwargs)
    return counter


@pytest.fixture(scope="module")
def ddim_pipe(pipe):
    """The tiny pipeline with the DDIM scheduler the traced runs use, so plain and traced runs step alike."""
    from diffusers import DDIMScheduler

    return type(pipe)(**{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)})


def test_recording_adds_a_bounded_number_of_kernel_ops_per_unet_call(ddim_pipe):
    plain = _loop_counts(ddim_pipe, None)
    none = _loop_counts(ddim_pipe, "none")
    default = _loop_counts(ddim_pipe, "default")
    assert plain.unet_calls == none.unet_calls == default.unet_calls == STEPS
    keys = explainer.trace(ddim_pipe, PROMPT, num_inference_steps=1, progress=False).attention
    groups = len({key.split("/")[1] for key in keys})  # "cond/16x16": same-shaped layers, batched together
    assert groups >= 2  # the tiny UNet has cross-attention at two resolutions
    extra_none = (none.kernels() - plain.kernels()) / STEPS
    extra_default = (default.kernels() - plain.kernels()) / STEPS
    assert 0 < extra_none <= PER_STEP, none.ops - plain.ops
    assert extra_none < extra_default <= PER_STEP + PER_GROUP * groups, default.ops - plain.ops
    # the only tensor comparison the recorder adds (torch.equal reads device memory back) is the first call's
    # batch-order check
    assert (default.ops - plain.ops)["aten.equal.default"] <= 3, default.ops - plain.ops


def test_cuda_checks_are_read_two_steps_late_and_change_nothing(pipe, monkeypatch):
    """With the lag a GPU uses, each step's finiteness check is read only once two later steps are committed
    (the last ones at the last step, before the decode), and the trace is the same as with checks read at once."""
    late = []
    read = Recorder._read_check

    def spy(self, entry):
        late.append(len(self.x0) - 1 - entry.step)  # steps committed since the checked one
        return read(self, entry)

    monkeypatch.setattr(Recorder, "_read_check", spy)
    at_once = explainer.trace(pipe, PROMPT, num_inference_steps=5, scheduler="ddim", progress=False)
    assert late == [0] * 5
    late.clear()
    monkeypatch.setattr(Recorder, "finite_check_lag", Recorder.CUDA_LAG)
    lagged = explainer.trace(pipe, PROMPT, num_inference_steps=5, scheduler="ddim", progress=False)
    assert late == [2, 2, 2, 1, 0]
    for name in ("latents", "x0", "eps_cond", "eps_uncond"):
        np.testing.assert_array_equal(getattr(lagged, name), getattr(at_once, name))
    for key, maps in at_once.attention.items():
        np.testing.assert_array_equal(lagged.attention[key], maps)
    assert lagged.final_image.tobytes() == at_once.final_image.tobytes()


def test_the_lag_follows_the_device():
    rec = Recorder.__new__(Recorder)
    assert rec._check_lag(torch.device("cuda")) == Recorder.CUDA_LAG == 2
    assert rec._check_lag(torch.device("cpu")) == 0
