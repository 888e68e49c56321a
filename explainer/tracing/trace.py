"""The Trace: plain data recorded from one denoising run, and its safetensors + JSON file format.

``S`` is the number of denoising iterations the run made (``len(scheduler.timesteps)``; PNDM makes
one more than ``num_inference_steps``; image-to-image and inpainting with ``strength < 1`` skip the
first ones), ``C, h, w`` the latent shape, ``H, W`` the image size, ``T`` recorded tokens.

Example:
    >>> tr = explainer.trace(pipe, "a red circle on the left", num_inference_steps=10)  # doctest: +SKIP
    >>> tr.save("run.safetensors"); tr = explainer.load_trace("run.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import attention as _attention
from . import guidance as _guidance
from . import previews as _previews
from . import storage as _storage
from .attention import AttentionLayer, Word
from .errors import StepIndexError, TraceFileError
from .previews import LatentRGB

FORMAT_NAME = "sd-explainer-trace"
# 2 added the image-to-image / inpainting fields; 3 the model family, token segments and schedule kind
# (metadata["family"], ["token_segments"], ["schedule_kind"]); 4 stores attention maps as uint8 levels with a
# per-map range ("attention_range/..."; see storage.py). Version 1 and 2 files still load (as "sd"), version 3 as it was.
FORMAT_VERSION = 4
MODES = ("txt2img", "img2img", "inpaint")
#: Optional arrays of image-to-image and inpainting traces (``None`` for text-to-image), in file order.
EDIT_ARRAYS = ("input_image", "mask", "mask_latent", "image_latent", "start_latent", "latents_blended",
               "latents_unblended")  # fmt: skip


@dataclass(eq=False, repr=False)
class Trace:
    """Everything recorded from one traced run. Plain data: no model, pipeline or scheduler inside.

    Attributes:
        prompt / negative_prompt: the text as given.
        tokens / token_ids: the prompt's CLIP BPE tokens, BOS .. first EOS.
        words: word → token-index grouping (indices into ``tokens``).
        truncated_tokens: BPE tokens dropped because the prompt was too long.
        negative_*: the same for the negative prompt (empty without guidance).
        timesteps, sigmas, alphas_cumprod: ``[S]`` the scheduler's timestep and noise level per step.
        x0_coef_sample, x0_coef_model: ``[S]`` the scheduler's ``x0 = a * x_t + b * model_output``.
        input_scale: ``[S+1]`` factor bringing ``latents[i]`` to unit variance (1 for VP schedulers).
        latents: ``[S+1, C, h, w]`` the latent before each step, then after the last.
        x0: ``[S, C, h, w]`` the predicted clean latent of each step.
        eps_cond, eps_uncond: ``[S, C, h, w]`` raw model output per branch (``metadata["model_output"]``
            says whether it is epsilon or v); ``eps_uncond`` is ``None`` without guidance.
        final_image: the pipeline's output image (``None`` for an incomplete trace).
        attention: stored cross-attention, keyed ``"{branch}/{group}"`` (see ``attention_layers``).
        attention_layers: the attn2 layers, their resolution and where their maps are stored.
        attention_mode: ``"none"``, ``"per_step"``, ``"per_layer"`` or ``"per_head"``.
        latent_rgb: linear latent → RGB map for previews, or ``None``.
        metadata: model, scheduler, seed, guidance, size, versions, timings...; ``metadata["mode"]`` is
            ``"txt2img"``, ``"img2img"`` or ``"inpaint"``; edits add ``strength``, ``start_step`` and (inpaint)
            ``inpaint_mode``: ``"unet9"`` (9-channel inpainting UNet) or ``"blend4"`` (4-channel UNet, the
            known region blended back after every step).
        complete: ``False`` when the run was interrupted; arrays then hold the finished steps.
        error: why the run stopped early, or ``None``.
        uid: unique id of the run (kept in the file; the VAE preview cache is keyed by latent content instead).
        input_image: ``[H, W, 3]`` uint8, the image given to the pipeline (after any resize); ``None`` for txt2img.
        mask: ``[H, W]`` float32, the mask the pipeline used (binarised: 1 = repainted); inpaint only.
        mask_latent: ``[h, w]`` float32, that mask at latent resolution (what the latent blend and a
            9-channel UNet see); inpaint only.
        image_latent: ``[C, h, w]`` the encoded input image, scaled by the VAE's ``scaling_factor``.
        start_latent: ``[C, h, w]`` the noised starting latent (equal to ``latents[0]``).
        latents_blended: ``[S, C, h, w]`` blend4 only: the latent after step ``i`` once the known region
            was blended back (what the pipeline carries on, so it equals ``latents[i + 1]``).
        latents_unblended: ``[S, C, h, w]`` blend4 only: the scheduler's output of step ``i`` before
            blending; inside the mask it equals ``latents_blended[i]``.

    ``latents`` always holds the pipeline's own state: the input of each step (for blend4, the
    blended latent), so ``x0``, ``what_if`` and previews stay consistent with what the UNet saw.

    Example:
        >>> tr = explainer.trace(explainer.load_pipeline(), "a red circle on the left")  # doctest: +SKIP
        >>> tr.preview(5, kind="x0"), tr.heatmap("circle"), tr.mode  # doctest: +SKIP

    Walk-throughs: ``notebooks/00_quickstart.ipynb`` (text-to-image) and ``notebooks/10_applications.ipynb``
    (image-to-image, inpainting, outpainting).
    """

    prompt: str
    negative_prompt: str | None
    tokens: list[str]
    token_ids: list[int]
    words: list[Word]
    truncated_tokens: list[str]
    negative_tokens: list[str]
    negative_token_ids: list[int]
    negative_words: list[Word]
    negative_truncated_tokens: list[str]
    timesteps: np.ndarray  # [step]
    sigmas: np.ndarray  # [step]
    alphas_cumprod: np.ndarray  # [step]
    x0_coef_sample: np.ndarray  # [step]
    x0_coef_model: np.ndarray  # [step]
    input_scale: np.ndarray  # [step+1]
    latents: np.ndarray  # [step+1, channel, h, w]
    x0: np.ndarray  # [step, channel, h, w]
    eps_cond: np.ndarray  # [step, channel, h, w]
    eps_uncond: np.ndarray | None  # [step, channel, h, w]
    final_image: Image.Image | None
    attention: dict[str, np.ndarray]  # "{branch}/{HxW}": [step, layer, (head,) token, h, w]; "{branch}/steps": [step, token, h, w]
    attention_layers: list[AttentionLayer]
    attention_mode: str
    latent_rgb: LatentRGB | None
    metadata: dict[str, Any]
    complete: bool = True
    error: str | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    input_image: np.ndarray | None = None  # [H, W, 3] uint8
    mask: np.ndarray | None = None  # [H, W] float32 in [0, 1], 1 = repainted
    mask_latent: np.ndarray | None = None  # [h, w] float32 in [0, 1]
    image_latent: np.ndarray | None = None  # [channel, h, w], scaled by vae.config.scaling_factor
    start_latent: np.ndarray | None = None  # [channel, h, w]
    latents_blended: np.ndarray | None = None  # [step, channel, h, w], after the known region is blended back
    latents_unblended: np.ndarray | None = None  # [step, channel, h, w], the scheduler's output before blending

    # ------------------------------------------------------------------ branching

    def fork(
        self,
        step: int,
        *,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        scheduler: Any = None,
        pipe: Any = None,
        progress: bool = True,
    ) -> Trace:
        """Continue this run from ``step`` with a new prompt, guidance, seed or scheduler (``tracing/fork.py``).

        Args:
            step: the first step that runs with the changes; steps ``0..step-1`` stay this trace's, bit for bit.
            prompt, negative_prompt, guidance_scale: new settings from ``step`` on (``None``: unchanged).
            seed: fresh noise from ``step`` on (ancestral / SDE schedulers).
            scheduler: a new scheduler from ``step`` on (needs float32 latents in this trace).
            pipe: the pipeline; ``None`` loads this trace's model.
            progress: show a progress bar.

        Returns:
            The branch, with its lineage in ``metadata["fork"]`` (``parent_uid``, ``step``, ``prefix``).
        """
        from .fork import fork

        return fork(self, step, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                    seed=seed, scheduler=scheduler, pipe=pipe, progress=progress)  # fmt: skip

    # ------------------------------------------------------------------ facts

    @property
    def mode(self) -> str:
        """``"txt2img"``, ``"img2img"`` or ``"inpaint"``."""
        return str(self.metadata.get("mode", "txt2img"))

    @property
    def strength(self) -> float | None:
        """The ``strength`` of an image-to-image or inpainting run (``None`` for text-to-image)."""
        value = self.metadata.get("strength")
        return None if value is None else float(value)

    @property
    def family(self) -> str:
        """The model family that made the trace: ``"sd"`` (SD 1.x/2.x) or ``"sdxl"``."""
        return str(self.metadata.get("family", "sd"))

    @property
    def schedule_kind(self) -> str:
        """``"vp"`` (samples ``sqrt(abar) x0 + sqrt(1 - abar) eps``) or ``"ve"`` (``x0 + sigma eps``)."""
        return str(self.metadata.get("schedule_kind") or self.metadata.get("scheduler", {}).get("space", "vp"))

    @property
    def token_segments(self) -> dict[str, list[dict[str, Any]]]:
        """Per branch, how its text became tokens: one dict per tokenizer pass (``name``, ``text``,
        ``tokenizer``, ``ids``, ``tokens``, ``words``, ``truncated``, ``key_offset``, ``combine``).

        SDXL keeps two per branch (``prompt`` and ``prompt_2``) with ``combine="features"``: both
        encoders' states are concatenated along the feature axis, so key ``i`` carries token ``i`` of
        each. A branch with no segments saw no text (SDXL's all-zero negative embedding).
        """
        return self.metadata["token_segments"]

    @property
    def start_step(self) -> int:
        """Index in the full ``num_inference_steps`` schedule of the first step run (0 for text-to-image)."""
        return int(self.metadata.get("start_step", 0))

    @property
    def num_steps(self) -> int:
        """Number of recorded steps ``S``."""
        return int(self.x0.shape[0])

    @property
    def guidance_scale(self) -> float:
        return float(self.metadata["guidance_scale"])

    @property
    def cfg_scale(self) -> float:
        """The scale that mixed the two branches: ``guidance_scale``, except FLUX's ``true_cfg_scale``
        (there ``guidance_scale`` is an embedding input of a guidance-distilled transformer)."""
        return float(self.metadata.get("cfg_scale", self.metadata["guidance_scale"]))

    @property
    def has_uncond(self) -> bool:
        """Whether the unconditional branch was run (classifier-free guidance)."""
        return self.eps_uncond is not None

    @property
    def height(self) -> int:
        return int(self.metadata["height"])

    @property
    def width(self) -> int:
        return int(self.metadata["width"])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the final image included)."""
        total = sum(a.nbytes for a in self._arrays().values())
        return int(total)

    def recorded_token_count(self, branch: str = "cond") -> int:
        """Number of tokens along the attention ``token`` axis for a branch."""
        for key, arr in self.attention.items():
            if key.startswith(branch + "/"):
                return int(arr.shape[-3])
        return len(self.tokens if branch == "cond" else self.negative_tokens)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"INCOMPLETE ({self.error})"
        return (
            f"Trace({self.prompt!r}, steps={self.num_steps}, size={self.width}x{self.height}, "
            f"guidance={self.guidance_scale}, scheduler={self.metadata.get('scheduler', {}).get('class')}, "
            + (f"mode={self.mode}, strength={self.strength:g}, " if self.mode != "txt2img" else "")
            + f"attention={self.attention_mode}, {self.nbytes / 1e6:.1f} MB, {state})"
        )

    # ------------------------------------------------------------------ views

    def _check_step(self, step: int, kind: str) -> int:
        count = self.latents.shape[0] if kind == "xt" else self.num_steps
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int, not {type(step).__name__}.")
        if not -count <= int(step) < count:
            what = "latents (xt) 0..{}".format(count - 1) if kind == "xt" else f"steps 0..{count - 1}"
            raise StepIndexError(f"step={int(step)} is out of range; this trace has {what}.")
        return int(step) % count

    def latent(self, step: int, kind: str = "x0") -> np.ndarray:
        """The ``[C, h, w]`` latent shown for a step: ``x0[step]``, or ``xt`` scaled to unit variance."""
        if kind not in ("x0", "xt"):
            raise ValueError(f"kind={kind!r} is not allowed; use 'x0' (predicted clean) or 'xt' (noisy latent).")
        step = self._check_step(step, kind)
        if kind == "x0":
            return self.x0[step].astype(np.float32)
        return self.latents[step].astype(np.float32) * np.float32(self.input_scale[step])

    def preview(self, step: int, kind: str = "x0", method: str = "linear", pipe: Any = None) -> Image.Image:
        """Image of a step's latent.

        Args:
            step: step index; for ``kind="xt"`` index ``S`` is the final latent.
            kind: ``"x0"`` (predicted clean latent) or ``"xt"`` (the noisy latent before the step).
            method: ``"linear"`` (latent → RGB factors, instant), ``"taesd"`` (the family's tiny
                autoencoder, see :func:`explainer.load_preview_decoder`; cached) or ``"vae"`` (full decode, cached).
            pipe: the pipeline (or its VAE), required for ``method="vae"``; for ``"taesd"``, an
                ``AutoencoderTiny`` to use instead of the loaded or cached one.

        Returns:
            A PIL image at the trace's image size.
        """
        latent = self.latent(step, kind)
        step = self._check_step(step, kind)
        if method == "linear":
            if self.latent_rgb is None:
                raise ValueError(
                    "this trace has no latent→RGB factors; set trace.latent_rgb = "
                    "explainer.fit_latent_rgb_factors(pipe, trace), or use method='vae' with pipe=."
                )
            return _previews.linear_preview(latent, self.latent_rgb, (self.width, self.height))
        if method == "vae":
            if pipe is None:
                raise ValueError("method='vae' decodes with the model: pass pipe=<the pipeline or its VAE>.")
            return _previews.vae_preview(pipe, latent)
        if method == "taesd":
            from .preview_decoder import decoder_for

            return _previews.vae_preview(decoder_for(self.family, pipe), latent)
        raise ValueError(f"method={method!r} is not allowed; use 'linear', 'taesd' or 'vae'.")

    def heatmap(
        self,
        word_or_token_index: str | int,
        step: int | slice | None = None,
        layers: Any = None,
        branch: str = "cond",
    ) -> np.ndarray:
        """Cross-attention heatmap ``[H, W]`` in [0, 1] at image resolution.

        Args:
            word_or_token_index: a word of the prompt (multi-token words average their tokens), a
                token string, or an index into ``tokens`` (``negative_tokens`` for ``branch="uncond"``).
            step: ``None`` for all steps (DAAM-style), an int, or a slice.
            layers: ``None`` or ``"all"`` (every layer), ``"daam"`` (DAAM's convention: all but the UNet
                mid-block), a resolution (``16``, ``"16x16"``, ``(16, 16)``), or a list of
                layer indices / names from ``attention_layers``.
            branch: ``"cond"`` (prompt) or ``"uncond"`` (negative prompt).
        """
        return _attention.heatmap(self, word_or_token_index, step, layers, branch)

    def what_if_x0(self, step: int, guidance_scale: float) -> np.ndarray:
        """``[C, h, w]`` x0 of ``step`` re-guided with ``guidance_scale`` (no model run)."""
        return _guidance.what_if_x0(self, step, guidance_scale)

    def what_if(self, step: int, guidance_scale: float, method: str = "linear", pipe: Any = None) -> Image.Image:
        """Preview of a step's x0 had it been guided with ``guidance_scale``.

        Args:
            step: step index.
            guidance_scale: the scale to try; the recorded scale reproduces ``preview(step)``.
            method: ``"linear"``, ``"taesd"`` (tiny autoencoder) or ``"vae"`` (needs ``pipe``).
            pipe: the pipeline or its VAE, for ``method="vae"``.
        """
        from .editing import latent_image

        x0 = self.what_if_x0(step, guidance_scale)
        step = self._check_step(step, "x0")
        return latent_image(self, x0, method, pipe, key=(step, "what_if", float(guidance_scale)))

    # ------------------------------------------------------------------ files

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "timesteps": self.timesteps,
            "sigmas": self.sigmas,
            "alphas_cumprod": self.alphas_cumprod,
            "x0_coef_sample": self.x0_coef_sample,
            "x0_coef_model": self.x0_coef_model,
            "input_scale": self.input_scale,
            "latents": self.latents,
            "x0": self.x0,
            "eps_cond": self.eps_cond,
        }
        if self.eps_uncond is not None:
            arrays["eps_uncond"] = self.eps_uncond
        if self.final_image is not None:
            arrays["final_image"] = np.asarray(self.final_image.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
        for key, arr in self.attention.items():
            arrays["attention/" + key] = arr
        for key in EDIT_ARRAYS:
            if getattr(self, key) is not None:
                arrays[key] = getattr(self, key)
        return arrays

    def save(self, path: str | Path, *, quantize_attention: bool = True) -> Path:
        """Write the trace to one safetensors file; JSON fields go in its header. No pickle.

        Args:
            path: the file to write (an existing file is replaced). Missing parent folders are created.
            quantize_attention: store attention maps as uint8 levels with a per-map range (about half
                the size; each value within 1/255 of its map's peak); ``False`` stores them as they are.

        Returns:
            The path written.

        Raises:
            TypeError: ``path`` is not a str or Path.
            IsADirectoryError: ``path`` is a folder.
            NotADirectoryError: a parent of ``path`` is a file.
            OSError: the file cannot be written (the message names the path).
        """
        path = writable_path(path, "path", "the trace file, e.g. 'run.safetensors'")

        header = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "words": [[w.text, list(w.token_indices)] for w in self.words],
            "truncated_tokens": self.truncated_tokens,
            "negative_tokens": self.negative_tokens,
            "negative_token_ids": self.negative_token_ids,
            "negative_words": [[w.text, list(w.token_indices)] for w in self.negative_words],
            "negative_truncated_tokens": self.negative_truncated_tokens,
            "attention_layers": [la.to_dict() for la in self.attention_layers],
            "attention_mode": self.attention_mode,
            "latent_rgb": self.latent_rgb.to_dict() if self.latent_rgb is not None else None,
            "metadata": self.metadata,
            "complete": self.complete,
            "error": self.error,
            "uid": self.uid,
        }
        if not isinstance(quantize_attention, bool):
            raise TypeError(f"quantize_attention must be True or False, not {quantize_attention!r}.")
        arrays: dict[str, np.ndarray] = {}
        for key, value in self._arrays().items():
            if key.startswith("attention/"):  # [step, layer, (head,) token, h, w] -> uint8 + [..., 2] ranges
                parts = _storage.split_attention(key.removeprefix("attention/"), value, quantize_attention)
                arrays.update({k: np.ascontiguousarray(v) for k, v in parts.items()})
            else:
                arrays[key] = np.ascontiguousarray(value)
        meta = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "trace": json.dumps(header, allow_nan=True, ensure_ascii=False),
        }
        # written beside and moved into place: a trace loaded from ``path`` maps its arrays from the old file
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            _storage.write_safetensors(partial, arrays, meta)
            os.replace(partial, path)
        except Exception as err:  # safetensors reports I/O failures as SafetensorError, without the path
            partial.unlink(missing_ok=True)
            raise OSError(f"could not write the trace to {path} ({type(err).__name__}: {err}).") from err
        return path


def writable_path(path: Any, name: str, example: str) -> Path:
    """``path`` as a Path whose parent folders exist (created if missing); refuse folders and paths under a file.

    Args:
        path: the file to write.
        name: the argument's name, for messages.
        example: what to pass instead, for messages.

    Returns:
        The path.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"{name} must be a str or Path, not {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{name}={str(path)!r} is a folder; give a file name inside it: {example}.")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(f"{name}={str(path)!r} cannot be written: {blocker} is a file, not a folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{name}={str(path)!r}: could not create the folder {path.parent} ({err.strerror or err}).") from err
    return path


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by :meth:`Trace.save` (format versions 1 to 4), lazily.

    Only the header and the small arrays are read at once: the large arrays are memory-mapped from the
    file (copy-on-write: changing them never changes the file), and quantised attention maps are
    :class:`~explainer.tracing.storage.QuantizedMaps`, dequantised as they are indexed. Looking at
    one step reads that step's bytes, not the whole file.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        The :class:`Trace`; files from version 1 (before image-to-image and inpainting) get ``mode="txt2img"``.

    Example:
        >>> tr = explainer.load_trace("demo/trace.safetensors")  # doctest: +SKIP

    Raises:
        TypeError: ``path`` is not a str or Path.
        FileNotFoundError: no such file.
        TraceFileError: the file is not a trace, is corrupt, comes from a newer format version, or holds
            arrays its metadata does not describe (checked before any array is read).
    """
    from safetensors import safe_open

    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path naming a trace file, not {type(path).__name__}.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT_NAME:
                raise TraceFileError(f"{path} is a safetensors file but not an sd-explainer trace (no format marker).")
            version = int(meta.get("format_version", "-1"))
            if version > FORMAT_VERSION or version < 1:
                raise TraceFileError(
                    f"{path} uses trace format version {version}; this sd-explainer reads format version "
                    f"{FORMAT_VERSION} and older (upgrade sd-explainer to read newer files)."
                )
            header = json.loads(meta["trace"])
            layout = {key: (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype()) for key in f.keys()}
            try:
                check_layout(header, layout, version)
            except TraceFileError as err:
                raise TraceFileError(f"{path}: {err}") from None
            except Exception as err:
                raise TraceFileError(f"{path} has incomplete trace metadata ({type(err).__name__}: {err}).") from err
            arrays = _storage.join_attention(_storage.read_arrays(path, f))
    except TraceFileError:
        raise
    except Exception as err:  # safetensors, JSON and key errors all mean the same to the user
        raise TraceFileError(f"{path} is not a readable sd-explainer trace file ({type(err).__name__}: {err}).") from err
    try:
        return _from_parts(header, arrays)
    except TraceFileError:
        raise
    except Exception as err:
        raise TraceFileError(f"{path} is an incomplete or inconsistent trace file ({type(err).__name__}: {err}).") from err


_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_SCALARS = ("timesteps", "sigmas", "alphas_cumprod", "x0_coef_sample", "x0_coef_model")


def check_layout(header: dict[str, Any], layout: dict[str, tuple[tuple[int, ...], str]], version: int = FORMAT_VERSION) -> None:
    """Check every array of a trace file against its metadata before anything is read.

    Each name must be one a trace of that mode and recording writes, and each shape must follow from
    the metadata (image size, scale factor, tokens, attention layers) and the step count.

    Args:
        header: the file's ``trace`` JSON.
        layout: array name → (shape, safetensors dtype string such as ``"F16"``).
        version: the file's format version (uint8 attention maps from version 4).

    Raises:
        TraceFileError: an array is missing, unexpected, or has a shape or dtype the metadata rules out.
    """
    meta = header["metadata"]
    height, width, factor = int(meta["height"]), int(meta["width"]), int(meta["model"]["vae_scale_factor"])
    if height < 1 or width < 1 or factor < 1 or height % factor or width % factor:
        raise TraceFileError(f"its metadata gives an impossible size ({width}x{height}, VAE scale factor {factor}).")
    h, w = height // factor, width // factor
    required = [*_SCALARS, "input_scale", "latents", "x0", "eps_cond"]
    missing = [k for k in required if k not in layout]
    if missing:
        raise TraceFileError(f"the trace file lacks arrays {missing}.")
    latents = layout["latents"][0]
    if len(latents) != 4 or latents[0] < 1:
        raise TraceFileError(f"its latents have shape {list(latents)}; a trace stores [steps + 1, channel, h, w].")
    if tuple(latents[2:]) != (h, w):
        raise TraceFileError(
            f"its metadata says {width}x{height} pixels (latents {h}x{w} at VAE scale factor {factor}), but its "
            f"latents are {latents[2]}x{latents[3]}; the file is inconsistent."
        )
    steps, channels = latents[0] - 1, latents[1]
    recorded = meta.get("num_steps_recorded")
    if recorded is not None and int(recorded) != steps:
        raise TraceFileError(f"its metadata records {recorded} steps, but its latents hold {steps}.")
    lat = (channels, h, w)
    expected: dict[str, tuple[int, ...]] = {k: (steps,) for k in _SCALARS}
    expected.update(input_scale=(steps + 1,), latents=(steps + 1, *lat), x0=(steps, *lat), eps_cond=(steps, *lat))
    cfg = "eps_uncond" in layout if meta.get("classifier_free_guidance") is None else bool(meta["classifier_free_guidance"])
    if cfg:
        expected["eps_uncond"] = (steps, *lat)
    expected["final_image"] = (height, width, 3)
    mode = meta.get("mode", "txt2img")
    if mode != "txt2img":
        expected.update(input_image=(height, width, 3), image_latent=lat, start_latent=lat)
    if mode == "inpaint":
        expected.update(mask=(height, width), mask_latent=(h, w))
        if meta.get("inpaint_mode") == "blend4":
            expected.update(latents_blended=(steps, *lat), latents_unblended=(steps, *lat))
    max_len = meta["model"].get("tokenizer_max_length")
    branches = {"cond": len(header["tokens"])}
    if cfg:
        branches["uncond"] = len(header["negative_tokens"])
    mode_attn = header["attention_mode"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for layer in header["attention_layers"]:
        groups.setdefault(layer["group"], []).append(layer)
    attention: dict[str, tuple[int, ...]] = {}
    for branch in branches:
        if mode_attn == "per_step":
            attention[f"attention/{branch}/steps"] = (steps, -1, h, w)
        elif mode_attn in ("per_layer", "per_head"):
            for group, layers in groups.items():
                heads = (layers[0]["heads"],) if mode_attn == "per_head" else ()
                attention[f"attention/{branch}/{group}"] = (steps, len(layers), *heads, -1, layers[0]["height"],
                                                            layers[0]["width"])  # fmt: skip
    expected.update(attention)
    for key in attention:  # version 4: uint8 maps come with their per-map [lo, hi]
        if key in layout and layout[key][1] == "U8":
            ranges = "attention_range/" + key.removeprefix("attention/")
            if ranges not in layout:
                raise TraceFileError(f"its uint8 attention maps {key!r} lack their per-map ranges {ranges!r}.")
            expected[ranges] = (*layout[key][0][:-2], 2)
    unexpected = sorted(set(layout) - set(expected))
    if unexpected:
        raise TraceFileError(
            f"it holds arrays a {mode} trace with attention={mode_attn!r} does not have: {unexpected[:5]}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "") + "."
        )
    for key, (shape, dtype) in layout.items():
        want = expected[key]
        if key.startswith("attention/"):
            branch = key.split("/")[1]
            tokens = shape[-3] if len(shape) == len(want) else None
            if tokens not in (branches[branch], max_len):
                want = tuple(branches[branch] if d == -1 else d for d in want)
            else:
                want = tuple(tokens if d == -1 else d for d in want)
        if tuple(shape) != want:
            raise TraceFileError(f"its array {key!r} has shape {list(shape)}; its metadata implies {list(want)}.")
        allowed = ("U8",) if key in ("final_image", "input_image") else _FLOAT_DTYPES
        if key.startswith("attention/") and version >= 4:
            allowed = (*_FLOAT_DTYPES, "U8")
        if dtype not in allowed:
            raise TraceFileError(f"its array {key!r} has dtype {dtype}; a trace stores {' or '.join(allowed)} there.")


def _from_parts(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Trace:
    required = ["timesteps", "sigmas", "alphas_cumprod", "x0_coef_sample", "x0_coef_model", "input_scale",
                "latents", "x0", "eps_cond"]  # fmt: skip
    missing = [k for k in required if k not in arrays]
    if missing:
        raise TraceFileError(f"the trace file lacks arrays {missing}.")
    steps = arrays["x0"].shape[0]
    if arrays["latents"].shape[0] != steps + 1 or arrays["eps_cond"].shape[0] != steps:
        raise TraceFileError("the trace file's arrays disagree on the number of steps.")
    attention = {k.removeprefix("attention/"): v for k, v in arrays.items() if k.startswith("attention/")}
    image = arrays.get("final_image")
    rgb = header.get("latent_rgb")
    metadata = dict(header["metadata"])
    metadata.setdefault("mode", "txt2img")  # version-1 files hold text-to-image traces only
    _fill_version_2(metadata, header)
    return Trace(
        prompt=header["prompt"],
        negative_prompt=header["negative_prompt"],
        tokens=list(header["tokens"]),
        token_ids=list(header["token_ids"]),
        words=[Word(t, tuple(idx)) for t, idx in header["words"]],
        truncated_tokens=list(header["truncated_tokens"]),
        negative_tokens=list(header["negative_tokens"]),
        negative_token_ids=list(header["negative_token_ids"]),
        negative_words=[Word(t, tuple(idx)) for t, idx in header["negative_words"]],
        negative_truncated_tokens=list(header["negative_truncated_tokens"]),
        timesteps=arrays["timesteps"],
        sigmas=arrays["sigmas"],
        alphas_cumprod=arrays["alphas_cumprod"],
        x0_coef_sample=arrays["x0_coef_sample"],
        x0_coef_model=arrays["x0_coef_model"],
        input_scale=arrays["input_scale"],
        latents=arrays["latents"],
        x0=arrays["x0"],
        eps_cond=arrays["eps_cond"],
        eps_uncond=arrays.get("eps_uncond"),
        final_image=Image.fromarray(image, "RGB") if image is not None else None,
        attention=attention,
        attention_layers=[AttentionLayer(**d) for d in header["attention_layers"]],
        attention_mode=header["attention_mode"],
        latent_rgb=LatentRGB.from_dict(rgb) if rgb is not None else None,
        metadata=metadata,
        complete=bool(header["complete"]),
        error=header["error"],
        uid=header["uid"],
        **{key: arrays.get(key) for key in EDIT_ARRAYS},
    )


def _fill_version_2(metadata: dict[str, Any], header: dict[str, Any]) -> None:
    """Give a version 1 or 2 file (SD 1.x/2.x only, one tokenizer) the version-3 metadata fields."""
    metadata.setdefault("family", "sd")
    metadata.setdefault("schedule_kind", metadata.get("scheduler", {}).get("space", "vp"))
    if "token_segments" not in metadata:
        segments = {}
        for branch, prefix, name in (("cond", "", "prompt"), ("uncond", "negative_", "negative_prompt")):
            if branch == "uncond" and not metadata.get("classifier_free_guidance"):
                continue
            segments[branch] = [{
                "name": name, "text": header[name] or "", "tokenizer": "tokenizer", "key_offset": 0,
                "combine": "sequence", "ids": list(header[prefix + "token_ids"]), "tokens": list(header[prefix + "tokens"]),
                "words": [list(w) for w in header[prefix + "words"]], "truncated": list(header[prefix + "truncated_tokens"]),
            }]  # fmt: skip
        metadata["token_segments"] = segments


def json_safe(value: Any) -> Any:
    """Convert configs to JSON-ready values (tuples → lists, numpy/torch scalars → Python, others → str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else str(float(value))
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return str(value)
