"""Export the toy model to ONNX for the live browser page, and write the page's model data scripts.

Three graphs, each a thin wrapper around the pipeline's own module (weights and code are diffusers' and
transformers'; nothing is reimplemented):

``text_encoder.onnx``
    ``input_ids`` int32 ``[1, tokens]`` → ``last_hidden_state`` float32 ``[1, tokens, dim]``.
``unet.onnx``
    ``sample`` ``[batch, C, h, w]``, ``timestep`` ``[1]`` (float32, an integer value), ``encoder_hidden_states``
    ``[batch, tokens, dim]`` → ``model_output`` ``[batch, C, h, w]`` and one ``attn_<i>`` output per
    cross-attention layer, ``[batch, h_l * w_l, tokens]``: the softmax probabilities averaged over heads.
    They are captured the way :func:`explainer.trace` captures them: each ``attn2`` layer runs its own
    processor for its output while a recording processor keeps the very ``to_q`` / ``to_k`` projections,
    and :func:`explainer.tracing.attention.attention_probs` turns them into probabilities.
``vae_decoder.onnx``
    ``latent`` ``[1, C, h, w]`` (as the scheduler leaves it) → ``image`` ``[1, 3, H, W]`` in ``[0, 1]``: the
    pipeline's ``vae.decode(latent / scaling_factor)`` and its image processor's denormalisation.

Initializers that float16 holds exactly (the toy's weights are stored in float16) are kept as float16 with
a ``Cast`` to float32 in front, so the files are half the size and compute exactly what float32 would.

The ONNX files are prebuilt and ship as package data (``explainer/_assets/toy_onnx``); this module needs
``onnx`` and ``onnxscript`` (the ``test`` extra) only to rebuild them: ``python scripts/export_toy_onnx.py``.
:func:`write_model_scripts` only reads the files and needs neither.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["MODEL_FILES", "export_toy_onnx", "live_config", "onnx_dir", "write_model_scripts"]

#: The three graphs, by the key the browser runtime uses.
MODEL_FILES = {"text_encoder": "text_encoder.onnx", "unet": "unet.onnx", "vae_decoder": "vae_decoder.onnx"}
CONFIG_FILE = "live_config.json"
OPSET = 18  # onnxruntime-web 1.30 runs up to opset 23; 18 is the oldest the torch exporter writes


def onnx_dir() -> Path:
    """Folder of the prebuilt toy ONNX files: the installed ``explainer._assets/toy_onnx``, else the checkout's."""
    from ..models import toy_model_path

    return toy_model_path().parent / "toy_onnx"


# --------------------------------------------------------------------------------------------- wrappers


class _TextEncoder(torch.nn.Module):
    """``input_ids`` (int32, which onnxruntime-web passes without BigInt) → ``last_hidden_state``."""

    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(torch.int64), return_dict=False)[0]


class _UNetWithAttention(torch.nn.Module):
    """The UNet, plus each cross-attention layer's head-averaged probabilities as extra outputs.

    Duck-types the part of :class:`explainer.tracing.recorder.Recorder` its attention processor uses
    (``active``, ``captured``), so the processor is the recorder's own.
    """

    def __init__(self, unet: torch.nn.Module, layers: list[Any], modules: dict[str, Any]) -> None:
        super().__init__()
        from ..tracing.recorder import CrossAttentionRecorder

        self.unet = unet
        self.layers = layers
        self.active = True
        self.captured: dict[int, tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        self._undo: list[Any] = []
        for layer in layers:
            module = modules[layer.name]
            original = module.processor
            proc = CrossAttentionRecorder(self, layer, original)
            module.set_processor(proc)
            self._undo.append(lambda m=module, o=original: m.set_processor(o))
            for proj, slot in ((module.to_q, "query"), (module.to_k, "key")):
                proj.forward = proc.wrap_projection(proj.forward, slot)
                self._undo.append(lambda p=proj: delattr(p, "forward"))

    def detach(self) -> None:
        """Give the UNet its own processors and projections back."""
        while self._undo:
            self._undo.pop()()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple:
        from ..tracing.attention import attention_probs

        self.captured = {}
        out = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        maps = []
        for layer in self.layers:
            attn, query, key, mask = self.captured[layer.index]
            maps.append(attention_probs(attn, query, key, mask).mean(dim=1))  # [B, N, T]
        self.captured = {}
        return (out, *maps)


class _VaeDecoder(torch.nn.Module):
    """Scheduler latent → image in ``[0, 1]``, as ``StableDiffusionPipeline`` decodes and denormalises."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        latent = latent / self.scaling_factor
        if self.shift_factor:
            latent = latent + self.shift_factor
        image = self.vae.decode(latent, return_dict=False)[0]
        return (image * 0.5 + 0.5).clamp(0, 1)


# --------------------------------------------------------------------------------------------- config


def attention_layers(pipe: Any) -> tuple[list[Any], dict[str, Any]]:
    """The UNet's cross-attention layers (execution order) at the pipeline's default latent size.

    Returns:
        ``(layers, modules)``: :class:`~explainer.tracing.attention.AttentionLayer` list and name → module.
    """
    from ..tracing.attention import AttentionLayer, cross_attention_modules, level_size

    size = int(pipe.unet.config.sample_size)
    layers, modules, groups = [], {}, {}
    for name, module, level in cross_attention_modules(pipe.unet):
        h, w = level_size(size, size, level)
        group = f"{h}x{w}"
        layer = AttentionLayer(len(layers), name, h, w, module.heads, group, groups.get(group, 0))
        groups[group] = groups.get(group, 0) + 1
        layers.append(layer)
        modules[name] = module
    return layers, modules


def live_config(pipe: Any) -> dict[str, Any]:
    """Sizes and names the browser needs, read from the pipeline's configs.

    Returns:
        A JSON-able dict: latent ``channels``/``height``/``width``, image ``image_height``/``image_width``,
        ``tokens`` (the tokenizer's ``model_max_length``), ``dim`` (the text encoder's width), the special
        token ids, ``scaling_factor``, ``attention`` (one ``{name, output, height, width, heads}`` per
        cross-attention layer, in the UNet's output order) and the ``scheduler`` config.
    """
    layers, _ = attention_layers(pipe)
    size = int(pipe.unet.config.sample_size)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    tok = pipe.tokenizer
    return {
        "channels": int(pipe.unet.config.in_channels),
        "height": size,
        "width": size,
        "image_height": size * scale,
        "image_width": size * scale,
        "tokens": int(tok.model_max_length),
        "dim": int(pipe.text_encoder.config.hidden_size),
        "bos_token_id": int(tok.bos_token_id),
        "eos_token_id": int(tok.eos_token_id),
        "pad_token_id": int(tok.pad_token_id),
        "scaling_factor": float(pipe.vae.config.scaling_factor),
        "attention": [
            {"name": la.name, "output": f"attn_{la.index}", "height": la.height, "width": la.width, "heads": la.heads}
            for la in layers
        ],
        "scheduler": {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")},
    }


# --------------------------------------------------------------------------------------------- export


def _half_initializers(model: Any, min_size: int = 16) -> Any:
    """Store float32 initializers that float16 holds exactly as float16, each behind a ``Cast`` to float32."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims, dtype=np.int64) < min_size:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        with np.errstate(over="ignore"):  # out-of-range values become inf and fail the equality test
            half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(half, f"{init.name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{init.name}__fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=f"{init.name}__cast"))  # fmt: skip
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
            dynamic_shapes: Any = None) -> None:  # fmt: skip
    import onnx

    program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                                output_names=output_names, dynamic_shapes=dynamic_shapes, external_data=False,
                                verbose=False, report=False)  # fmt: skip
    model = _half_initializers(program.model_proto)
    for node in model.graph.node:  # the exporter's per-node provenance (stack traces, module paths): ~2 MB for the UNet
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def export_toy_onnx(out_dir: str | os.PathLike[str] | None = None, *, pipe: Any = None) -> dict[str, Path]:
    """Export the toy's text encoder, UNet (with attention outputs) and VAE decoder to ONNX.

    Args:
        out_dir: where to write; default :func:`onnx_dir` (the package's prebuilt copies).
        pipe: a float32 toy pipeline to export (default: ``load_pipeline("toy", device="cpu", dtype="fp32")``).

    Returns:
        ``{"text_encoder": path, "unet": path, "vae_decoder": path, "config": path}``.
    """
    from ..models import load_pipeline

    out = Path(out_dir) if out_dir is not None else onnx_dir()
    out.mkdir(parents=True, exist_ok=True)
    if pipe is None:
        pipe = load_pipeline("toy", device="cpu", dtype="fp32")
    config = live_config(pipe)
    c, h, w, t, d = (config[k] for k in ("channels", "height", "width", "tokens", "dim"))
    paths = {key: out / name for key, name in MODEL_FILES.items()}
    with torch.no_grad():
        ids = torch.full((1, t), config["pad_token_id"], dtype=torch.int32)
        ids[0, 0] = config["bos_token_id"]
        _export(_TextEncoder(pipe.text_encoder).eval(), (ids,), paths["text_encoder"],
                ["input_ids"], ["last_hidden_state"])  # fmt: skip
        layers, modules = attention_layers(pipe)
        wrapper = _UNetWithAttention(pipe.unet, layers, modules).eval()
        batch = torch.export.Dim("batch", min=1, max=8)
        try:
            _export(wrapper, (torch.zeros(2, c, h, w), torch.tensor([999.0]), torch.zeros(2, t, d)), paths["unet"],
                    ["sample", "timestep", "encoder_hidden_states"],
                    ["model_output", *[la["output"] for la in config["attention"]]],
                    dynamic_shapes=({0: batch}, None, {0: batch}))  # fmt: skip
        finally:
            wrapper.detach()
        _export(_VaeDecoder(pipe.vae).eval(), (torch.zeros(1, c, h, w),), paths["vae_decoder"],
                ["latent"], ["image"])  # fmt: skip
    paths["config"] = out / CONFIG_FILE
    paths["config"].write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return paths


# --------------------------------------------------------------------------------------------- page data


def write_model_scripts(out_dir: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write the ONNX models as classic scripts the page loads with ``<script src>`` (works from ``file://``).

    Each ``model_<key>.js`` sets ``SDXLive.modelData.<key>`` to the base64 of one ONNX file;
    ``model_config.js`` sets ``SDXLive.modelConfig`` (see :func:`live_config`).

    Args:
        out_dir: folder to write into (created if missing).
        source: folder with the ONNX files and ``live_config.json``; default :func:`onnx_dir`.

    Returns:
        The written paths, config first.
    """
    src = Path(source) if source is not None else onnx_dir()
    missing = [n for n in (*MODEL_FILES.values(), CONFIG_FILE) if not (src / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {missing}; build them with: python scripts/export_toy_onnx.py")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = "(function (root) {\n  const ns = root.SDXLive = root.SDXLive || {};\n"
    tail = "})(typeof self !== 'undefined' ? self : globalThis);\n"
    config = json.loads((src / CONFIG_FILE).read_text(encoding="utf-8"))
    written = [out / "model_config.js"]
    written[0].write_text(f"{head}  ns.modelConfig = {json.dumps(config)};\n{tail}", encoding="utf-8")
    for key, name in MODEL_FILES.items():
        data = base64.b64encode((src / name).read_bytes()).decode("ascii")
        path = out / f"model_{key}.js"
        path.write_text(f"{head}  ns.modelData = ns.modelData || {{}};\n  ns.modelData.{key} = '{data}';\n{tail}",
                        encoding="utf-8")  # fmt: skip
        written.append(path)
    return written
