"""The ``explainer`` command line: ``run`` a traced generation, ``export`` a trace, show its ``info``, ``batch``
many prompts and show a batch's ``batch-status``.

Bad input (a missing file, an unknown format or option, a negative step count...) prints a one-line
message naming the argument and exits with status 2, as argparse does for its own errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_FILES = {"trace": "trace.safetensors", "image": "final.png", "gif": "steps.gif", "html": "explainer.html"}
EXPORT_SUFFIXES = (".gif", ".webp", ".mp4", ".png", ".html", ".htm")
RUN_GIF_PANELS = ("xt", "x0", "final")
RUN_EDIT_PANELS = ("input", "xt", "x0", "final")  # image-to-image and inpainting runs show the input too
#: Option name → the flag that sets it, for messages.
_FLAGS = {"captions": "--no-captions", "loop": "--no-loop", "notes": "--note", "questions": "--question"}


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated step indices such as 0,5,-1, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("must name at least one step index")
    return values


def _step_note(text: str) -> tuple[int, str]:
    """``STEP=TEXT`` (a handout note for a step index) as ``(step, text)``."""
    step, sep, note = text.partition("=")
    try:
        index = int(step)
    except ValueError:
        index = None
    if not sep or index is None or not note.strip():
        raise argparse.ArgumentTypeError(f"must be STEP=TEXT with a step index, e.g. '0=pure noise', got {text!r}")
    return index, note.strip()


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("must name at least one item")
    return names


def _add_frame_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``export`` (all default to None: only given ones reach the writer)."""
    from .export.frames import PANELS

    g = p.add_argument_group("what the frames show")
    g.add_argument(
        "--panels",
        type=_name_list,
        metavar="P,P",
        help=f"panels side by side, from {', '.join(PANELS)} (default xt,x0)",
    )
    g.add_argument(
        "--words",
        type=_name_list,
        metavar="W,W",
        help="prompt words whose attention map is overlaid (HTML: chips; default all words)",
    )
    g.add_argument(
        "--size",
        type=_positive_int,
        metavar="PX",
        help="longest side of each panel in pixels (default: image size, upscaled to >= 256)",
    )
    g.add_argument("--steps", type=_int_list, metavar="I,I", help="step indices to show, e.g. 0,5,10,-1")
    g.add_argument("--every", type=_positive_int, metavar="K", help="show every K-th step (the last always included)")
    g.add_argument(
        "--no-captions",
        dest="captions",
        action="store_false",
        default=None,
        help="no labels and no step/timestep/sigma caption",
    )
    g.add_argument(
        "--resample", choices=["nearest", "bilinear", "bicubic", "lanczos"], help="upscaling filter (default nearest)"
    )
    t = p.add_argument_group("timing and encoding")
    t.add_argument("--fps", type=_positive_float, help="frames per second (default 8)")
    t.add_argument(
        "--hold", type=_non_negative_float, metavar="SECONDS", help="extra time on the last frame (default 1)"
    )
    t.add_argument(
        "--no-loop", dest="loop", action="store_false", default=None, help="GIF/WebP: play once instead of looping"
    )
    t.add_argument("--quality", type=_positive_int, help="WebP/HTML 1..100, MP4 1..10")
    t.add_argument("--columns", type=_positive_int, help="PNG grid: steps per row before wrapping")
    h = p.add_argument_group("handout (HTML)")
    h.add_argument("--note", dest="notes", type=_step_note, action="append", metavar="STEP=TEXT",
                   help="a note shown from step index STEP on, and listed on the page (repeatable)")  # fmt: skip
    h.add_argument("--question", dest="questions", action="append", metavar="TEXT",
                   help="a question for the class, listed at the end of the page (repeatable)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``explainer`` argument parser with its ``run``, ``export`` and ``info`` subcommands."""
    from . import __version__
    from .tracing.schedulers import SCHEDULERS

    parser = argparse.ArgumentParser(
        prog="explainer",
        description="Make Stable Diffusion visible: trace every denoising step, export it, inspect it.",
        epilog="Run 'explainer COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"sd-explainer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="generate an image, record every step, and save the trace, image, GIF and HTML",
        description="Generate an image with a traced pipeline and save, in --out: "
        f"{RUN_FILES['trace']}, {RUN_FILES['image']}, {RUN_FILES['gif']} and {RUN_FILES['html']}. "
        "With --image it traces image-to-image; with --image and --mask, inpainting.",
    )
    run.add_argument("prompt", help="the text prompt (quote it)")
    run.add_argument(
        "--model",
        default="toy",
        help="'toy' (bundled 64x64 model, default), a local diffusers folder, or a cached Hub id",
    )
    run.add_argument("--steps", type=_positive_int, default=25, help="denoising steps (default 25)")
    run.add_argument(
        "--guidance",
        type=_non_negative_float,
        help="classifier-free guidance scale (default: the pipeline's own, 7.5 for SD 1.x/2.x, 5.0 for SDXL)",
    )
    run.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    run.add_argument(
        "--scheduler", choices=sorted(SCHEDULERS), help="scheduler for this run (default: the model's own)"
    )
    run.add_argument("--negative", metavar="TEXT", help="negative prompt")
    run.add_argument("--prompt-2", metavar="TEXT", help="SDXL and SD3: the second text encoder's prompt (default: the prompt)")
    run.add_argument(
        "--negative-prompt-2", metavar="TEXT", help="SDXL and SD3: the second text encoder's negative prompt"
    )
    run.add_argument("--prompt-3", metavar="TEXT", help="SD3 only: the T5 encoder's prompt (default: the prompt)")
    run.add_argument("--negative-prompt-3", metavar="TEXT", help="SD3 only: the T5 encoder's negative prompt")
    run.add_argument("--max-sequence-length", type=_positive_int, metavar="N",
                     help="T5 tokens the transformer attends to (SD3, FLUX; default: the pipeline's, 256 / 512)")  # fmt: skip
    run.add_argument("--true-cfg-scale", type=float, metavar="G",
                     help="FLUX only: true classifier-free guidance scale, used with --negative (default: off)")  # fmt: skip
    edit = run.add_argument_group("image-to-image and inpainting")
    edit.add_argument("--image", type=Path, metavar="IN.png", help="input image: trace image-to-image (or inpainting)")
    edit.add_argument(
        "--mask", type=Path, metavar="MASK.png", help="inpainting mask, the image's size: white = repaint, black = keep"
    )
    edit.add_argument(
        "--strength",
        type=_strength,
        help="how far into the noise the input goes, in (0, 1] (default 0.75; 1.0 with --mask)",
    )
    run.add_argument("--height", type=_positive_int, help="image height in pixels (default: the model's)")
    run.add_argument("--width", type=_positive_int, help="image width in pixels (default: the model's)")
    run.add_argument("--device", help="torch device, e.g. cpu or cuda (default: CUDA, then MPS, then CPU)")
    run.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    run.add_argument("--no-gif", dest="gif", action="store_false", help="skip the GIF")
    run.add_argument("--no-html", dest="html", action="store_false", help="skip the HTML page")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_cmd_run, parser=run)

    exp = sub.add_parser(
        "export",
        help="export a saved trace as .gif, .webp, .mp4, .png (grid) or .html",
        description="Export a trace saved by 'explainer run' or Trace.save. The format follows OUT's suffix: "
        + ", ".join(EXPORT_SUFFIXES[:-1])
        + ".",
    )
    exp.add_argument("trace", type=Path, help="trace file (.safetensors)")
    exp.add_argument("out", type=Path, help="output file; its suffix picks the format")
    exp.add_argument("--parent", type=Path, metavar="TRACE",
                     help="the trace TRACE was forked from ('explainer fork'): export both side by side, the fork step marked")
    _add_frame_options(exp)
    exp.add_argument("--quiet", action="store_true", help="no progress bar")
    exp.set_defaults(handler=_cmd_export, parser=exp)

    info = sub.add_parser(
        "info", help="show a trace's prompt, tokens, settings and sizes", description="Show what a trace file holds."
    )
    info.add_argument("trace", type=Path, help="trace file (.safetensors)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=_cmd_info, parser=info)
    _add_batch_commands(sub)
    from .cli_branch import add_branch_commands

    add_branch_commands(sub, sorted(SCHEDULERS), _positive_int, _non_negative_int, _non_negative_float)
    from .cli_live import add_live_command

    add_live_command(sub)
    return parser


def _add_batch_commands(sub: Any) -> None:
    """The ``batch`` and ``batch-status`` subcommands (explainer.batch)."""
    from .tracing.schedulers import SCHEDULERS

    bat = sub.add_parser(
        "batch",
        help="trace many prompts and seeds into a folder: a trace + PNG each and a Parquet index (resumable)",
        description="Trace every prompt of PROMPTS (a .txt file, one prompt a line, or a .csv/.parquet table with a "
        "'prompt' column and optional per-row negative_prompt, prompt_2, negative_prompt_2 (SDXL), seed, guidance_scale, num_inference_steps, scheduler, "
        "image, mask, strength, height, width) with every seed, into --out: traces/, images/, records/ and "
        "index.parquet. Run it again to continue after a crash. Exits 1 when some items recorded an error.",
    )
    bat.add_argument("prompts", help="prompts file (.txt, .csv, .parquet; a path or an fsspec URL)")
    bat.add_argument("--out", required=True, metavar="DIR", help="output folder (a path or an fsspec URL)")
    bat.add_argument("--seeds", default="0", help="seeds of rows without their own, e.g. 0-3 or 0,5,9 (default 0)")
    bat.add_argument("--model", default="toy", help="'toy' (default), a local diffusers folder, or a cached Hub id")
    bat.add_argument("--steps", type=_positive_int, help="denoising steps (default 25)")
    bat.add_argument("--guidance", type=_non_negative_float, help="guidance scale (default: the pipeline's own, 7.5 for SD 1.x/2.x, 5.0 for SDXL)")
    bat.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="scheduler (default: the model's own)")
    bat.add_argument("--negative", metavar="TEXT", help="negative prompt of rows without their own")
    bat.add_argument("--record", choices=["default", "none", "per_step", "per_layer", "per_head"],
                     help="attention recording (default: per_layer)")
    bat.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray")
    bat.add_argument("--address", help="ray: the cluster to join, e.g. auto (default: start a local instance)")
    bat.add_argument("--workers", type=_positive_int, help="ray: number of actors (default: GPUs, else CPUs)")
    bat.add_argument("--device", help="torch device (default: CUDA, then MPS, then CPU; ray: cuda with GPUs)")
    bat.add_argument("--retry-failed", action="store_true", help="run items that recorded an error again")
    bat.add_argument("--allow-empty", action="store_true", help="trace empty prompts as unconditional images")
    bat.add_argument("--quiet", action="store_true", help="no progress bar")
    bat.set_defaults(handler=_cmd_batch, parser=bat)

    st = sub.add_parser("batch-status", help="show how far a batch folder is", description="Count the planned, "
                        "finished, failed and pending items of a batch folder and show the last errors.")
    st.add_argument("folder", help="the batch's --out folder")
    st.add_argument("--json", action="store_true", help="print machine-readable JSON")
    st.set_defaults(handler=_cmd_batch_status, parser=st)


# ----------------------------------------------------------------------------------------- commands


def _load(parser: argparse.ArgumentParser, path: Path) -> Any:
    from .tracing import TraceFileError, load_trace

    if not path.is_file():
        parser.error(f"no trace file at {path}")
    try:
        return load_trace(path)
    except (TraceFileError, OSError) as err:
        parser.error(str(err))


def _quiet_loading() -> None:
    """Hide diffusers' and transformers' per-component loading bars: the trace's own bar is the one that matters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .export import export
    from .models import load_pipeline
    from .tracing import trace
    from .tracing.preview_decoder import find_preview_decoder
    from .tracing.previews import vae_decode_is_cheap

    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    _check_writable_folder(parser, args.out, "--out")  # before the run, not after it
    if args.image is None and (args.mask is not None or args.strength is not None):
        parser.error(f"{'--mask' if args.mask is not None else '--strength'} needs --image (the picture to edit)")
    edit = {}
    if args.image is not None:
        edit["image"] = _open_image(parser, args.image, "--image")
        if args.mask is not None:
            edit["mask"] = _open_image(parser, args.mask, "--mask", mask=True)
        if args.strength is not None:
            edit["strength"] = args.strength
    _quiet_loading()
    try:
        pipe = load_pipeline(args.model, device=args.device)
    except ValueError as err:
        flag = "--device" if str(err).startswith("device=") else "--model"
        parser.error(f"{flag} {args.device if flag == '--device' else args.model}: {err}")
    except (OSError, TypeError) as err:
        parser.error(f"--model {args.model}: {_one_line(err)}")
    pipe.set_progress_bar_config(disable=True)
    _check_family_flags(parser, args, pipe)
    try:
        result = trace(
            pipe,
            args.prompt,
            negative_prompt=args.negative,
            prompt_2=args.prompt_2,
            negative_prompt_2=args.negative_prompt_2,
            **{name: value for name in ("prompt_3", "negative_prompt_3", "max_sequence_length", "true_cfg_scale")
               if (value := getattr(args, name)) is not None},  # fmt: skip
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            height=args.height,
            width=args.width,
            scheduler=args.scheduler,
            progress=not args.quiet,
            **edit,
        )
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    except FloatingPointError as err:  # NaN or infinite values during the run (e.g. an absurd --guidance)
        parser.error(_one_line(err))
    args.out.mkdir(parents=True, exist_ok=True)
    trace_path = result.save(args.out / RUN_FILES["trace"])
    print(f"wrote {trace_path} ({trace_path.stat().st_size / 1e6:.2f} MB)")
    if result.final_image is not None:
        image_path = args.out / RUN_FILES["image"]
        result.final_image.save(image_path)
        print(f"wrote {image_path}")
    if not result.complete:
        print(f"warning: the run stopped early ({result.error}); exports show the finished steps.", file=sys.stderr)
    # frames are VAE decodes when decoding every step is cheap (the toy model), else linear previews
    decoder = pipe if (args.gif or args.html) and vae_decode_is_cheap(pipe, result) else None
    if decoder is None and (args.gif or args.html):  # the middle tier: a tiny autoencoder, if loaded or cached
        tiny = find_preview_decoder(result.family)
        decoder = tiny if tiny is not None and vae_decode_is_cheap(tiny, result) else None
    edited = result.mode != "txt2img"
    if args.gif:
        panels = RUN_EDIT_PANELS if edited else RUN_GIF_PANELS
        export(result, args.out / RUN_FILES["gif"], panels=panels, progress=not args.quiet, pipe=decoder)
    if args.html:
        panels = RUN_EDIT_PANELS if edited else None
        export(result, args.out / RUN_FILES["html"], panels=panels, progress=not args.quiet, pipe=decoder)
    return 0


def _one_line(err: BaseException) -> str:
    """The first line of an error message (library errors can span many)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _check_writable_folder(parser: argparse.ArgumentParser, folder: Path, flag: str) -> None:
    """Exit with status 2 unless ``folder`` exists or can be created: its nearest existing parent is a writable folder."""
    import os

    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        parser.error(f"{flag} {folder}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        parser.error(f"{flag} {folder}: no permission to write in {existing}")


def _open_image(parser: argparse.ArgumentParser, path: Path, flag: str, mask: bool = False) -> Any:
    """Open an image file for ``run``; a mask saved as RGB(A) grey levels is read as grey, and said so."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        parser.error(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as opened:
            image = opened.copy()
    except (UnidentifiedImageError, OSError) as err:
        parser.error(f"{flag} {path} is not an image Pillow can read ({err})")
    if mask and len(image.getbands()) > 1:
        print(f"note: {flag} {path} has mode {image.mode}; reading it as grey levels (white = repaint).",
              file=sys.stderr)  # fmt: skip
        image = image.convert("L")
    return image


def _cmd_export(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .export import export, format_options

    suffix = args.out.suffix.lower()
    if args.out.is_dir():
        example = args.out / ("steps" + (suffix if suffix in EXPORT_SUFFIXES else ".gif"))
        parser.error(f"OUT {args.out} is a folder; give a file name inside it, e.g. {example}")
    if suffix not in EXPORT_SUFFIXES:
        shown = f"'{args.out.suffix}'" if args.out.suffix else "no suffix"
        parser.error(f"OUT {args.out} has {shown}; the format follows the suffix, one of {', '.join(EXPORT_SUFFIXES)}")
    names = (
        "panels",
        "words",
        "size",
        "steps",
        "every",
        "captions",
        "resample",
        "fps",
        "hold",
        "loop",
        "quality",
        "columns",
        "notes",
        "questions",
    )
    options = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if "notes" in options:
        options["notes"] = dict(options["notes"])
    allowed = format_options(suffix)
    misplaced = [_FLAGS.get(n, "--" + n) for n in options if n not in allowed]
    if misplaced:
        usable = [_FLAGS.get(n, "--" + n) for n in names if n in allowed]
        parser.error(f"{', '.join(misplaced)} does not apply to {suffix} export; its options: {' '.join(usable)}")
    loaded = _load(parser, args.trace)
    parent = _load(parser, args.parent) if args.parent is not None else None
    if parent is not None and not isinstance(loaded.metadata.get("fork"), dict):
        parser.error(f"--parent {args.parent}: {args.trace} is not a fork (it holds no fork record); "
                     "'explainer fork' makes one")  # fmt: skip
    try:
        export(loaded, args.out, parent=parent, progress=not args.quiet, **options)
    except (ValueError, TypeError, IndexError) as err:
        parser.error(str(err))
    except OSError as err:
        parser.error(f"OUT {args.out}: {_one_line(err)}")
    return 0


def _check_family_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, pipe: Any) -> None:
    """Refuse --prompt-2 / --negative-prompt-2 (--prompt-3 / --negative-prompt-3) for a model without a second
    (a T5) text encoder (exit 2, one line)."""
    from .tracing.errors import UnsupportedPipelineError
    from .tracing.families import family_for

    given = [flag for flag, value in (("--prompt-2", args.prompt_2), ("--negative-prompt-2", args.negative_prompt_2))
             if value is not None]  # fmt: skip
    if not given and args.prompt_3 is None and args.negative_prompt_3 is None:
        return
    try:
        family = family_for(pipe)
    except UnsupportedPipelineError as err:
        parser.error(f"--model {args.model}: {_one_line(err)}")
    third = [flag for flag, value in (("--prompt-3", args.prompt_3), ("--negative-prompt-3", args.negative_prompt_3))
             if value is not None]  # fmt: skip
    if third and "prompt_3" not in family.prompt_arguments:
        parser.error(f"{third[0]} applies to Stable Diffusion 3 models (a T5 text encoder); --model {args.model} "
                     f"is a {family.label} model, so leave {third[0]} out.")  # fmt: skip
    if given and "prompt_2" not in family.prompt_arguments:
        parser.error(f"{given[0]} applies to Stable Diffusion XL models (a second text encoder); --model {args.model} "
                     f"is a {family.label} model with one, so leave {given[0]} out.")  # fmt: skip


def trace_summary(loaded: Any, path: Path | None = None) -> dict[str, Any]:
    """The facts ``explainer info`` shows, as JSON-ready data."""
    from .export.html import model_name

    meta = loaded.metadata
    sched = meta.get("scheduler", {}) if isinstance(meta.get("scheduler"), dict) else {}
    sizes = sorted({(la.height, la.width) for la in loaded.attention_layers}, reverse=True)
    summary = {
        "file": str(path) if path is not None else None,
        "file_mb": round(path.stat().st_size / 1e6, 3) if path is not None else None,
        "prompt": loaded.prompt,
        "negative_prompt": loaded.negative_prompt,
        "tokens": loaded.tokens,
        "words": [w.text for w in loaded.words],
        "truncated_tokens": loaded.truncated_tokens,
        "family": loaded.family,
        "token_segments": {
            branch: [{k: seg.get(k) for k in ("name", "text", "tokenizer", "combine", "key_offset", "tokens")} for seg in segs]
            for branch, segs in loaded.token_segments.items()
        },
        "unconditional": meta.get("unconditional") or (
            "no unconditional branch" if not loaded.has_uncond else
            "negative prompt" if loaded.negative_prompt else "empty negative prompt"),  # files before format 3
        "model": model_name(loaded),
        "scheduler": sched.get("class"),
        "steps": loaded.num_steps,
        "guidance_scale": loaded.guidance_scale,
        "seed": meta.get("seed"),
        "width": loaded.width,
        "height": loaded.height,
        "latent_shape": list(loaded.latents.shape[1:]),
        "mode": loaded.mode,
        "strength": loaded.strength,
        "start_step": loaded.start_step,
        "inpaint_mode": meta.get("inpaint_mode"),
        "attention_mode": loaded.attention_mode,
        "attention_method": meta.get("attention_method"),
        "schedule_kind": loaded.schedule_kind,
        "schedule": meta.get("schedule"),
        "attention_layers": len(loaded.attention_layers),
        "attention_resolutions": [f"{h}x{w}" for h, w in sizes],
        "array_mb": round(loaded.nbytes / 1e6, 3),
        "complete": loaded.complete,
        "error": loaded.error,
        "created": meta.get("created"),
    }
    return summary


def _cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    loaded = _load(parser, args.trace)
    s = trace_summary(loaded, args.trace)
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    rows = [
        ("file", f"{s['file']} ({s['file_mb']:.2f} MB)"),
        ("prompt", repr(s["prompt"])),
        ("negative", repr(s["negative_prompt"]) if s["negative_prompt"] else "(none)"),
        ("tokens", f"{len(s['tokens'])}: " + " ".join(s["tokens"])),
        ("words", ", ".join(s["words"]) or "(none)"),
    ]
    if s["truncated_tokens"]:
        rows.append(("truncated", " ".join(s["truncated_tokens"])))
    for segs in s["token_segments"].values():  # the second tokenizer's reading (SDXL), on the same key positions
        for seg in segs[1:]:
            shared = (" (same key positions)" if seg["combine"] == "features" else
                      " (pooled vector only, no key positions)" if seg["combine"] == "pooled" else  # FLUX's CLIP
                      f" (keys from {seg['key_offset']})")  # fmt: skip
            rows.append(("segment", f"{seg['name']} = {seg['text']!r} via {seg['tokenizer']}{shared}, "
                                    f"{len(seg['tokens'])} tokens: " + " ".join(seg["tokens"])))  # fmt: skip
    rows += [
        ("family", s["family"]),
        ("uncond", str(s["unconditional"])),
        ("model", str(s["model"])),
        ("scheduler", str(s["scheduler"])),
        ("settings", f"steps {s['steps']}, guidance {s['guidance_scale']:g}, seed {s['seed']}"),
        ("image", f"{s['width']}x{s['height']}, latent {'x'.join(map(str, s['latent_shape']))}"),
        ("mode", s["mode"] + ("" if s["mode"] == "txt2img" else
                              f", strength {s['strength']:g} (starts at step {s['start_step']} of "
                              f"{loaded.metadata.get('num_inference_steps')})"
                              + (f", {s['inpaint_mode']}" if s["inpaint_mode"] else ""))),
        ("attention", f"{s['attention_mode']}, {s['attention_layers']} layers"
         + (f" at {', '.join(s['attention_resolutions'])}" if s["attention_resolutions"] else "")),
        *([("maps", s["attention_method"])] if s["attention_method"] else []),
        *([("schedule", "flow matching (σ, velocity)" + "".join(
            f", {k} {s['schedule'][k]:.3g}" for k in ("shift", "mu") if isinstance((s["schedule"] or {}).get(k), (int, float))
        ))] if s["schedule_kind"] == "flow" else []),
        ("arrays", f"{s['array_mb']:.2f} MB"),
        ("status", "complete" if s["complete"] else f"incomplete: {s['error']}"),
        ("created", str(s["created"])),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _cmd_batch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import batch

    if args.engine == "local" and (args.address is not None or args.workers is not None):
        parser.error(f"{'--address' if args.address is not None else '--workers'} needs --engine ray")
    try:
        seeds = batch.parse_seeds(args.seeds)
    except ValueError as err:
        parser.error(f"--seeds: {err}")
    if "://" not in args.out:
        _check_writable_folder(parser, Path(args.out), "--out")
    options = {"num_inference_steps": args.steps, "guidance_scale": args.guidance, "scheduler": args.scheduler,
               "negative_prompt": args.negative, "record": args.record}
    options = {k: v for k, v in options.items() if v is not None}
    if args.engine == "ray":
        options.update(address=args.address, workers=args.workers)
    try:
        report = batch.run(args.model, args.prompts, args.out, seeds=seeds, engine=args.engine, device=args.device,
                           retry_failed=args.retry_failed, allow_empty_prompt=args.allow_empty,
                           progress=not args.quiet, **options)
    except (ValueError, TypeError, ImportError, OSError) as err:  # bad input, no Ray, a missing file or model
        parser.error(_one_line(err))
    print(f"{args.out}: {report.planned} items, {report.skipped} already done, {report.ok} traced, "
          f"{report.errors} errors in {report.seconds:.1f} s")
    for line in report.error_messages[:5]:
        print(f"error: {line}", file=sys.stderr)
    return 1 if report.errors else 0


def _cmd_batch_status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import batch

    try:
        s = batch.status(args.folder)
    except (FileNotFoundError, OSError) as err:
        parser.error(_one_line(err))
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    mean = f"{s['mean_item_s']:.2f} s per trace" if s["mean_item_s"] is not None else "no trace yet"
    print(f"{s['folder']}: {s['done']} done of {s['planned']} planned ({s['ok']} ok, {s['errors']} errors, "
          f"{s['pending']} pending); {mean}; {s['trace_mb']:.1f} MB of traces")
    for line in s["last_errors"]:
        print(f"  error: {line}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``explainer`` console script.

    Args:
        argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success. Bad input exits with status 2 through ``SystemExit``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args, args.parser)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
