"""Load a Stable Diffusion pipeline: the bundled toy model, a local folder, or a Hub id from the cache."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def toy_model_path() -> Path:
    """Folder of the bundled toy model (diffusers layout).

    Looks for the installed package data ``explainer._assets/toy`` first, then falls back to the
    source checkout's ``assets/toy``. The folder may not hold a model yet; check for ``model_index.json``.

    Example:
        >>> path = explainer.toy_model_path()
        >>> (path / "model_index.json").is_file()
        True
        >>> StableDiffusionPipeline.from_pretrained(path)  # plain diffusers loads it too
    """
    try:
        installed = importlib.resources.files("explainer._assets") / "toy"
        if installed.joinpath("model_index.json").is_file():
            return Path(str(installed))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    return Path(__file__).resolve().parent.parent / "assets" / "toy"


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'.") from err


def _pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype={dtype!r} is not supported; use None, torch.float32, torch.float16 or torch.bfloat16.")


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~", "\\"))
        or text.count("/") > 1
        or os.sep != "/" and os.sep in text
        or (len(text) > 1 and text[1] == ":")
    )


def _dtype_kwarg() -> str:
    # diffusers renamed `torch_dtype` to `dtype` (the old name still works but warns).
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"


def load_pipeline(
    model: str | os.PathLike[str] = "toy",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> StableDiffusionPipeline:
    """Load a ``StableDiffusionPipeline`` with safetensors weights only.

    Args:
        model: ``"toy"`` (the bundled model), a local folder in diffusers layout, or a Hugging Face Hub id
            (downloaded or read from the local cache by diffusers' ``from_pretrained``).
        device: where to run; default CUDA, then MPS, then CPU.
        dtype: weights dtype; default float16 on CUDA, float32 elsewhere.

    Returns:
        The pipeline, moved to ``device``.

    Raises:
        FileNotFoundError: the toy model is not installed, the folder does not exist, or the Hub id
            cannot be fetched (offline) and is not cached; the message says what to pass instead.

    Example:
        >>> pipe = explainer.load_pipeline()                       # the bundled toy model
        >>> pipe = explainer.load_pipeline("/models/stable-diffusion-v1-5")
        >>> pipe = explainer.load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", dtype="fp16")

        Real models, where to get them and how much memory they need:
        ``notebooks/09_real_models.ipynb``.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be 'toy', a folder path or a Hub id string, not {type(model).__name__}.")
    dev = _pick_device(device)
    torch_dtype = _pick_dtype(dtype, dev)
    source = os.fspath(model)
    local: Path | None = None
    if source == "toy":
        local = toy_model_path()
        if not (local / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the bundled toy model is not installed (no model_index.json in {local}). "
                "Pass a local Stable Diffusion folder in diffusers layout, or a Hub id that is in your cache."
            )
    else:
        candidate = Path(source).expanduser()
        if candidate.exists():
            local = candidate
            if not (candidate / "model_index.json").is_file():
                raise FileNotFoundError(
                    f"{candidate} is not a diffusers pipeline folder (it has no model_index.json)."
                )
        elif _looks_like_path(source):
            raise FileNotFoundError(f"no model folder at {candidate}; pass an existing folder, a Hub id, or 'toy'.")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(local) if local is not None else source, use_safetensors=True, **{_dtype_kwarg(): torch_dtype}
        )
    except (OSError, ValueError) as err:
        if local is not None:
            raise
        from huggingface_hub import constants

        offline = " (offline: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"could not load {source!r} from the Hugging Face Hub{offline}, and it is not in the local cache "
            "with safetensors weights. Pass the path of a local folder in diffusers layout "
            "(load_pipeline('/path/to/model')), or use the bundled model: load_pipeline('toy'). "
            f"[{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}]"
        ) from err
    return pipe.to(dev)
