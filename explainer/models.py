"""Load a Stable Diffusion pipeline: the bundled toy model, a local folder, or a Hub id from the cache."""

from __future__ import annotations

import importlib.resources
import os
import warnings
from pathlib import Path
from typing import Any

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
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'.") from err
    _check_available(dev, device)
    return dev


def _check_available(dev: torch.device, given: object) -> None:
    """Refuse a CUDA or MPS device this torch build or machine does not have (torch would fail later, unclearly)."""
    fallback = "use device='cpu', or device=None to pick the best available"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")  # fmt: skip
            raise ValueError(f"device={given!r} is not available: {why} (torch {torch.__version__}); {fallback}.")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={given!r} is not available: this machine has {count} CUDA device(s); {fallback}.")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device={given!r} is not available: MPS needs Apple silicon and a torch built for it; {fallback}.")


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


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _check_safetensors(folder: Path) -> None:
    """Refuse a pipeline folder whose model components have pickle weights (``.bin``) but no ``.safetensors``."""
    import json

    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder / 'model_index.json'} is not readable JSON ({err}).") from err
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        sub = folder / name
        if name not in index or not sub.is_dir():
            continue
        files = [p.name for p in sub.iterdir() if p.is_file()]
        if any(f.endswith(".safetensors") for f in files):
            continue
        pickled = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
        if pickled:
            raise FileNotFoundError(
                f"{sub} has only pickle weights ({', '.join(pickled)}), and load_pipeline reads safetensors only "
                "(pickle files can run code when loaded). If you trust the folder, convert it once: "
                "StableDiffusionPipeline.from_pretrained(folder, use_safetensors=False).save_pretrained(new_folder)."
            )


#: ``model_index.json`` class names load_pipeline accepts, and the pipeline class it loads them with.
_SD_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
_SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
#: SD3 / SD3.5 folders of any of these classes hold the same components; they load as the text-to-image pipeline.
_SD3_CLASSES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
#: FLUX.1 text-to-image / image-to-image folders hold the same components; they load as FluxPipeline. Other Flux*
#: pipelines (Fill, Control, Kontext, inpainting) have other transformers or inputs and are not traced yet.
_FLUX_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline")
_NOT_YET = {"Flux": "FLUX.1 variant"}


def pipeline_class(index: dict, source: str) -> type:
    """The diffusers pipeline class to load a model with, from its ``model_index.json``.

    Args:
        index: the parsed ``model_index.json``.
        source: the folder or Hub id, for messages.

    Returns:
        ``StableDiffusionPipeline`` (SD 1.x/2.x), ``StableDiffusionXLPipeline`` (SDXL base),
        ``StableDiffusion3Pipeline`` (SD3 / SD3.5) or ``FluxPipeline`` (FLUX.1).

    Raises:
        ValueError: a model the tracer cannot trace yet (FLUX Fill / Control / Kontext, an SDXL refiner,
            anything else).
    """
    from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline

    name = str(index.get("_class_name", ""))
    if name in _SD_CLASSES:
        return StableDiffusionPipeline
    if name in _SDXL_CLASSES:
        encoder = index.get("text_encoder")
        if not isinstance(encoder, (list, tuple)) or None in encoder:
            raise ValueError(
                f"model={source!r} is an SDXL refiner ({name} with only text_encoder_2); it is not supported: the "
                "tracer maps attention to the prompt's tokens through the base model's two text encoders. "
                "Load the SDXL base model instead."
            )
        return StableDiffusionXLPipeline
    if name in _SD3_CLASSES:
        return StableDiffusion3Pipeline
    if name in _FLUX_CLASSES:
        from diffusers import FluxPipeline

        return FluxPipeline
    for prefix, label in _NOT_YET.items():
        if name.startswith(prefix):
            raise ValueError(
                f"model={source!r} is a {label} pipeline ({name}); it is not supported yet (the tracer runs FLUX.1 "
                "text-to-image and image-to-image: FluxPipeline / FluxImg2ImgPipeline folders)."
            )
    raise ValueError(
        f"model={source!r} is a {name or 'pipeline with no _class_name'}; load_pipeline takes Stable Diffusion "
        "1.x/2.x, SDXL base, SD3 / SD3.5 and FLUX.1 folders (model_index.json _class_name StableDiffusionPipeline, "
        "StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline, or their Img2Img / Inpaint variants)."
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
) -> Any:
    """Load a ``StableDiffusionPipeline`` (SD 1.x/2.x), ``StableDiffusionXLPipeline``,
    ``StableDiffusion3Pipeline`` or ``FluxPipeline`` with safetensors weights only.

    The class comes from the model's ``model_index.json``: SD 1.x/2.x, SDXL base, SD3 / SD3.5 and FLUX.1
    folders (their Img2Img / Inpaint variants too) load; FLUX Fill / Control / Kontext and SDXL refiner
    folders get a clear "not supported" error.

    Args:
        model: ``"toy"`` (the bundled model), a local folder in diffusers layout, or a Hugging Face Hub id
            (downloaded or read from the local cache by diffusers' ``from_pretrained``).
        device: where to run; default CUDA, then MPS, then CPU.
        dtype: weights dtype; default float16 on CUDA, float32 elsewhere.

    Returns:
        The pipeline, moved to ``device``.

    Raises:
        FileNotFoundError: the toy model is not installed, the folder does not exist or has only pickle
            (``.bin``) weights, or the Hub id cannot be fetched (offline) and is not cached; the message
            says what to pass instead.
        ValueError: ``device`` is not a torch device or is not available on this machine, ``dtype`` is unknown,
            or the model is not one the tracer supports (FLUX Fill, an SDXL refiner...).

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
    cls = StableDiffusionPipeline
    if local is not None:
        import json

        try:
            index = json.loads((local / "model_index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{local / 'model_index.json'} is not readable JSON ({err}).") from err
        cls = pipeline_class(index, source)
        _check_safetensors(local)
    else:
        from diffusers import DiffusionPipeline

        try:
            with warnings.catch_warnings():  # huggingface_hub's deprecation notice about an argument diffusers passes
                warnings.simplefilter("ignore")
                index = DiffusionPipeline.load_config(source)  # model_index.json from the Hub or the local cache
        except Exception:  # noqa: BLE001 - not reachable or not a pipeline: the load below says which
            index = None
        if isinstance(index, dict):
            cls = pipeline_class(index, source)
    try:
        pipe = cls.from_pretrained(
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
