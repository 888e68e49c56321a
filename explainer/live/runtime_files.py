"""Where the live page's browser-side runtime files are, and the order its ``<script src>`` tags load them."""

from __future__ import annotations

from pathlib import Path

from .export_onnx import MODEL_FILES

#: runtime.js and the vendored onnxruntime-web (``vendor/onnxruntime-web/``); copy the folder next to the page.
STATIC_DIR = Path(__file__).resolve().parent / "static"


def runtime_scripts() -> list[str]:
    """The classic scripts ``SDXLive.Runtime`` needs, in load order, as paths relative to the page's folder.

    ``vendor/...`` and ``runtime.js`` come from :data:`STATIC_DIR`; the ``model_*.js`` files from
    :func:`explainer.live.export_onnx.write_model_scripts`.

    Returns:
        ``["vendor/onnxruntime-web/ort.wasm.min.js", "vendor/onnxruntime-web/ort-wasm-binary.js",
        "model_config.js", "model_text_encoder.js", "model_unet.js", "model_vae_decoder.js", "runtime.js"]``.
    """
    return ["vendor/onnxruntime-web/ort.wasm.min.js", "vendor/onnxruntime-web/ort-wasm-binary.js", "model_config.js",
            *[f"model_{key}.js" for key in MODEL_FILES], "runtime.js"]  # fmt: skip
