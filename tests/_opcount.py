"""Counting the ATen ops a pipeline call dispatches inside its denoising loop, and those that launch kernels.

``benchmarks/trace_ops.py`` reports these counts; ``test_recording_cost.py`` bounds what the recorder adds.
Op counts are properties of the code, the same on any machine, so they can be checked on a CPU without timing.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

NO_KERNEL = {"aten.detach.default", "aten.lift_fresh.default", "aten.empty.memory_format", "aten.empty_strided.default",
             "aten._local_scalar_dense.default", "aten.alias.default", "aten._unsafe_view.default",
             "aten._reshape_alias.default", "aten.new_empty.default"}  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside the denoising loop: from the first UNet call to the VAE decode."""

    def __init__(self, pipe) -> None:  # noqa: ANN001
        super().__init__()
        self.ops = collections.Counter()
        self.state = "before"  # "before" the loop, "in" it, "after" it (the VAE decode and what follows)
        self.unet_calls = 0
        self._handle = pipe.unet.register_forward_pre_hook(self._unet_call)
        self._pipe, self._decode = pipe, pipe.vae.decode
        pipe.vae.decode = self._decoding

    def _unet_call(self, *args) -> None:  # noqa: ANN002
        if self.state == "before":
            self.state = "in"
        self.unet_calls += self.state == "in"

    def _decoding(self, *args, **kwargs):  # noqa: ANN002, ANN003
        if self.state == "in":
            self.state = "after"
        return self._decode(*args, **kwargs)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._handle.remove()
        del self._pipe.vae.decode
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if self.state == "in":
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def kernels(self) -> int:
        """How many of the counted ops run a kernel on a GPU (views, ``detach``, allocations excluded)."""
        return sum(n for name, n in self.ops.items() if name not in NO_KERNEL and not is_view(name))


def is_view(name: str) -> bool:
    """Whether the op named ``name`` (``aten.view.default``) returns a view (no kernel runs)."""
    packet, _, overload = name.removeprefix("aten.").rpartition(".")
    op = getattr(getattr(torch.ops.aten, packet), overload)
    return bool(op.is_view)
