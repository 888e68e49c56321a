"""The middle preview tier: a tiny autoencoder (TAESD family, diffusers' ``AutoencoderTiny``).

Between the instant linear latent → RGB preview and the exact but costly full VAE decode, live
previews in A1111 and ComfyUI decode with TAESD, a ~1.2 M-parameter decoder trained to mimic a
model's VAE. Each model family has its own: ``madebyollin/taesd`` (SD 1.x/2.x), ``taesdxl``,
``taesd3`` and ``taef1`` (FLUX). They are never downloaded here: a local folder, or a copy already
in the Hugging Face cache, is used; :func:`load_preview_decoder` says how to get one otherwise.
For the bundled toy model, whose VAE is already tiny, the full decode is the right tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The tiny autoencoder of each model family (Hugging Face repository ids).
TINY_DECODERS = {
    "sd": "madebyollin/taesd",
    "sdxl": "madebyollin/taesdxl",
    "sd3": "madebyollin/taesd3",
    "flux": "madebyollin/taef1",
}
_LOADED: dict[str, Any] = {}  # family -> the decoder loaded or registered for it (None: looked, none found)


def _family_from_name(name: str) -> str | None:
    stem = name.rstrip("/").rsplit("/", 1)[-1].lower()
    for prefix, family in (("taesdxl", "sdxl"), ("taesd3", "sd3"), ("taef1", "flux"), ("taesd", "sd")):
        if stem.startswith(prefix):  # the longer names first: "taesdxl" before "taesd"
            return family
    return None


def how_to_get(family: str) -> str:
    """One sentence on getting ``family``'s tiny decoder (for error messages)."""
    repo = TINY_DECODERS.get(family)
    if repo is None:
        return f"there is no known tiny decoder for model family {family!r} (known: {sorted(TINY_DECODERS)})."
    return (
        f"download it once while online (`huggingface-cli download {repo}`, or "
        f"`diffusers.AutoencoderTiny.from_pretrained({repo!r})`), or pass a local folder holding it: "
        f"explainer.load_preview_decoder('path/to/{repo.split('/')[1]}')."
    )


def load_preview_decoder(path: str | Path | None = None, *, family: str | None = None) -> Any:
    """Load a tiny autoencoder for ``method="taesd"`` previews, and use it from then on for its family.

    Nothing is downloaded: ``path`` is a local folder (``config.json`` and weights) or a repository
    id already in the Hugging Face cache; ``None`` looks in the cache for ``family``'s decoder.

    Args:
        path: a folder, a repository id such as ``"madebyollin/taesd"``, or ``None``.
        family: ``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"flux"``; guessed from the folder or repository
            name (``taesd``, ``taesdxl``, ``taesd3``, ``taef1``) when not given.

    Returns:
        The ``diffusers.AutoencoderTiny`` (on the CPU, float32, in eval mode).

    Raises:
        ValueError: ``family`` is unknown, or cannot be guessed from ``path``.
        FileNotFoundError: no such folder, or the decoder is not in the cache (the message says how to get it).

    Example:
        >>> dec = explainer.load_preview_decoder("madebyollin/taesd")  # doctest: +SKIP
        >>> tr.preview(10, method="taesd")                              # doctest: +SKIP
    """
    from diffusers import AutoencoderTiny

    if path is not None and not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a folder, a repository id or None, not {type(path).__name__}.")
    if family is None:
        family = _family_from_name(str(path)) if path is not None else "sd"
        if family is None:
            raise ValueError(f"cannot tell the model family of {str(path)!r}; pass family= one of {sorted(TINY_DECODERS)}.")
    if family not in TINY_DECODERS:
        raise ValueError(f"family={family!r} is not allowed; use one of {sorted(TINY_DECODERS)}.")
    source = TINY_DECODERS[family] if path is None else str(path)
    folder = Path(source).expanduser()
    if folder.is_dir():
        decoder = AutoencoderTiny.from_pretrained(str(folder))
    elif path is not None and (folder.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1):
        raise FileNotFoundError(f"path={source!r}: no such folder; {how_to_get(family)}")
    else:
        try:
            decoder = AutoencoderTiny.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(f"{source} is not in the Hugging Face cache ({type(err).__name__}); "
                                    f"{how_to_get(family)}") from None  # fmt: skip
    decoder = decoder.eval().requires_grad_(False)
    _LOADED[family] = decoder
    return decoder


def use_preview_decoder(decoder: Any, *, family: str = "sd") -> None:
    """Use ``decoder`` (an ``AutoencoderTiny``, or ``None`` to forget it) for ``family``'s ``method="taesd"`` previews.

    Args:
        decoder: the decoder, or ``None``.
        family: the model family it decodes.
    """
    if family not in TINY_DECODERS:
        raise ValueError(f"family={family!r} is not allowed; use one of {sorted(TINY_DECODERS)}.")
    if decoder is not None and not is_tiny(decoder):
        raise TypeError(f"decoder must be a diffusers AutoencoderTiny, not {type(decoder).__name__}.")
    if decoder is None:
        _LOADED.pop(family, None)
    else:
        _LOADED[family] = decoder


def is_tiny(module: Any) -> bool:
    """Whether ``module`` is a diffusers ``AutoencoderTiny``."""
    return type(module).__name__ == "AutoencoderTiny" and hasattr(module, "decode")


def find_preview_decoder(family: str) -> Any:
    """``family``'s tiny decoder if one was loaded or is in the Hugging Face cache, else ``None`` (never downloads)."""
    if family not in _LOADED:
        _LOADED[family] = None  # looked once; call load_preview_decoder() after a download
        if family in TINY_DECODERS and _in_cache(TINY_DECODERS[family]):
            try:
                load_preview_decoder(family=family)
            except (FileNotFoundError, ValueError):
                pass
    return _LOADED[family]


def _in_cache(repo: str) -> bool:
    """Whether ``repo``'s ``config.json`` is in the Hugging Face cache (a file look-up, no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def decoder_for(family: str, pipe: Any = None) -> Any:
    """The tiny decoder a ``method="taesd"`` preview uses: ``pipe`` itself (or its ``vae``) if it is an
    ``AutoencoderTiny``, else ``family``'s loaded or cached one.

    Raises:
        FileNotFoundError: none is available (the message says how to get one).
    """
    for candidate in (pipe, getattr(pipe, "vae", None)):
        if candidate is not None and is_tiny(candidate):
            return candidate
    decoder = find_preview_decoder(family)
    if decoder is None:
        raise FileNotFoundError(
            f"method='taesd' needs the tiny autoencoder of this {family!r} trace ({TINY_DECODERS.get(family, 'none known')}) "
            f"and none is loaded or in the Hugging Face cache; {how_to_get(family)} Or pass pipe=<an AutoencoderTiny>."
        )
    return decoder
