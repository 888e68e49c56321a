"""The ``explainer fork`` and ``explainer edit`` subcommands: branch a saved run, or edit a prompt with prompt-to-prompt."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

FORK_FILES = {"trace": "fork.safetensors", "image": "fork.png", "both": "branches.png"}
EDIT_FILES = {"source": "source.safetensors", "target": "target.safetensors", "source_image": "source.png",
              "target_image": "target.png", "both": "edit.png"}  # fmt: skip
#: ``--export FORMAT``: both runs side by side, one step for both (:func:`explainer.export`), as
#: ``branches.<ext>`` (fork) or ``edit.<ext>`` (edit); the PNG grid is ``*_grid.png`` (``*.png`` is the figure).
EXPORT_FORMATS = ("gif", "webp", "mp4", "png", "html")


def export_name(stem: str, fmt: str) -> str:
    """File name of an ``--export`` format: ``branches.gif``, ``edit.html``, ``branches_grid.png``..."""
    return f"{stem}_grid.png" if fmt == "png" else f"{stem}.{fmt}"


def _export_format(text: str) -> list[str]:
    names = [t.strip().lower().lstrip(".") for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in EXPORT_FORMATS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected formats among {', '.join(EXPORT_FORMATS)}, got {text!r}")
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def _weight(text: str) -> tuple[str, float]:
    word, sep, value = text.partition("=")
    try:
        factor = float(value)
    except ValueError:
        factor = float("nan")
    if not sep or not word or not factor >= 0:
        raise argparse.ArgumentTypeError(f"expected WORD=FACTOR with a factor >= 0 (e.g. red=2), got {text!r}")
    return word, factor


def add_branch_commands(sub: Any, scheduler_names: list[str], positive_int: Any, non_negative_int: Any,
                        non_negative_float: Any) -> None:  # fmt: skip
    """Add ``fork`` and ``edit`` to the ``explainer`` subcommands."""
    fork = sub.add_parser(
        "fork",
        help="branch a saved trace at a step with a new prompt, guidance, seed or scheduler",
        description="Continue a saved text-to-image trace from step K with changed settings; steps 0..K-1 stay "
        f"the parent's. Writes {FORK_FILES['trace']}, {FORK_FILES['image']} and {FORK_FILES['both']} "
        "(parent and fork side by side) to --out; --export adds an animation, grid or page of both runs.",
    )
    fork.add_argument("trace", type=Path, help="the parent trace (.safetensors)")
    fork.add_argument("--step", type=non_negative_int, required=True, help="first step with the new settings")
    fork.add_argument("--prompt", help="new prompt from --step on")
    fork.add_argument("--negative", metavar="TEXT", help="new negative prompt from --step on")
    fork.add_argument("--guidance", type=non_negative_float, help="new guidance scale from --step on")
    fork.add_argument("--seed", type=non_negative_int, help="fresh noise from --step on (ancestral schedulers)")
    fork.add_argument("--scheduler", choices=scheduler_names, help="new scheduler from --step on")
    fork.add_argument("--model", help="the parent's model (default: the folder recorded in the trace)")
    fork.add_argument("--device", help="torch device (default: CUDA, then MPS, then CPU)")
    fork.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    fork.add_argument("--export", type=_export_format, action="append", metavar="FORMAT",
                      help="also write parent and fork side by side, the fork step marked: gif, webp, mp4, png (grid) or "
                      "html, as branches.<ext> (branches_grid.png); repeatable or comma-separated")  # fmt: skip
    fork.add_argument("--quiet", action="store_true", help="no progress bar")
    fork.set_defaults(handler=cmd_fork, parser=fork)

    edit = sub.add_parser(
        "edit",
        help="prompt-to-prompt: change words of a prompt and keep the image's layout",
        description="Trace SOURCE, then TARGET with SOURCE's attention maps injected (prompt-to-prompt). Writes "
        + ", ".join(EDIT_FILES.values()) + " to --out; --export adds an animation, grid or page of both runs.",
    )
    edit.add_argument("source", help="the source prompt (quote it)")
    edit.add_argument("target", help="the edited prompt (quote it)")
    edit.add_argument("--mode", choices=["replace", "refine", "reweight"], default="replace",
                      help="replace: swap words; refine: add words; reweight: scale words (default replace)")  # fmt: skip
    edit.add_argument("--cross-steps", type=_fraction, default=0.6, help="fraction of steps with the source's "
                      "cross-attention (default 0.6, explainer.edit's)")  # fmt: skip
    edit.add_argument("--self-steps", type=_fraction, default=0.4, help="fraction of steps with the source's "
                      "self-attention (default 0.4)")  # fmt: skip
    edit.add_argument("--weight", type=_weight, action="append", metavar="WORD=FACTOR",
                      help="scale a target word's attention (repeatable), e.g. --weight red=2")  # fmt: skip
    edit.add_argument("--no-keep-context", dest="keep_context", action="store_false",
                      help="the target's own text states for its unchanged tokens (maps alone, as in the paper)")  # fmt: skip
    edit.add_argument("--model", default="toy", help="'toy' (default), a local diffusers folder or a cached Hub id")
    edit.add_argument("--steps", type=positive_int, default=25, help="denoising steps (default 25)")
    edit.add_argument("--guidance", type=non_negative_float, help="guidance scale (default: the pipeline's own)")
    edit.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    edit.add_argument("--scheduler", choices=scheduler_names, help="scheduler (default: the model's own)")
    edit.add_argument("--device", help="torch device (default: CUDA, then MPS, then CPU)")
    edit.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    edit.add_argument("--export", type=_export_format, action="append", metavar="FORMAT",
                      help="also write source and target side by side: gif, webp, mp4, png (grid) or html, as "
                      "edit.<ext> (edit_grid.png); repeatable or comma-separated")  # fmt: skip
    edit.add_argument("--quiet", action="store_true", help="no progress bars")
    edit.set_defaults(handler=cmd_edit, parser=edit)


def _pipeline(parser: argparse.ArgumentParser, model: str, device: str | None) -> Any:
    from .cli import _one_line, _quiet_loading
    from .models import load_pipeline

    _quiet_loading()
    try:
        pipe = load_pipeline(model, device=device)
    except ValueError as err:
        flag = "--device" if str(err).startswith("device=") else "--model"
        parser.error(f"{flag} {device if flag == '--device' else model}: {_one_line(err)}")
    except (OSError, TypeError) as err:
        parser.error(f"--model {model}: {_one_line(err)}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write_exports(item: Any, args: argparse.Namespace, stem: str, pipe: Any, **kwargs: Any) -> None:
    """``--export``: both runs side by side in each format asked for (VAE decodes when they are cheap)."""
    from .export import export
    from .tracing.previews import vae_decode_is_cheap

    formats = list(dict.fromkeys(f for group in args.export or [] for f in group))
    if not formats:
        return
    first = item.source if hasattr(item, "source") else kwargs["parent"]
    decoder = pipe if vae_decode_is_cheap(pipe, first) else None
    for fmt in formats:
        export(item, args.out / export_name(stem, fmt), progress=not args.quiet, pipe=decoder, **kwargs)


def _save_figure(fig: Any, path: Path) -> None:
    from .views._common import figure_png

    path.write_bytes(figure_png(fig))
    print(f"wrote {path}")


def cmd_fork(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``explainer fork TRACE --step K ...``."""
    from .cli import _check_writable_folder, _load, _one_line
    from .views.commitment import branches

    _check_writable_folder(parser, args.out, "--out")
    parent = _load(parser, args.trace)
    model = args.model or parent.metadata.get("model", {}).get("name_or_path")
    if not model:
        parser.error(f"{args.trace} does not record its model folder; pass --model")
    pipe = _pipeline(parser, model, args.device)
    try:
        child = parent.fork(args.step, prompt=args.prompt, negative_prompt=args.negative, guidance_scale=args.guidance,
                            seed=args.seed, scheduler=args.scheduler, pipe=pipe, progress=not args.quiet)  # fmt: skip
    except (ValueError, TypeError) as err:
        parser.error(_one_line(err).replace("step=", "--step ", 1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = child.save(args.out / FORK_FILES["trace"])
    print(f"wrote {path} (prefix {child.metadata['fork']['prefix']}: {child.metadata['fork']['reason']})")
    child.final_image.save(args.out / FORK_FILES["image"])
    print(f"wrote {args.out / FORK_FILES['image']}")
    _save_figure(branches(parent, child), args.out / FORK_FILES["both"])
    _write_exports(child, args, "branches", pipe, parent=parent)
    return 0


def cmd_edit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``explainer edit SOURCE TARGET ...``."""
    from .cli import _check_writable_folder, _one_line
    from .tracing import edit
    from .views.commitment import branches

    _check_writable_folder(parser, args.out, "--out")
    pipe = _pipeline(parser, args.model, args.device)
    try:
        result = edit(pipe, args.source, args.target, mode=args.mode, cross_steps=args.cross_steps,
                      self_steps=args.self_steps, keep_context=args.keep_context, weights=dict(args.weight or []),
                      num_inference_steps=args.steps,
                      guidance_scale=args.guidance, seed=args.seed, scheduler=args.scheduler,
                      progress=not args.quiet)  # fmt: skip
    except (ValueError, TypeError) as err:
        parser.error(_one_line(err))
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, tr in (("source", result.source), ("target", result.target)):
        path = tr.save(args.out / EDIT_FILES[kind])
        tr.final_image.save(args.out / EDIT_FILES[f"{kind}_image"])
        print(f"wrote {path} and {args.out / EDIT_FILES[f'{kind}_image']}")
    _save_figure(branches(result.source, result.target), args.out / EDIT_FILES["both"])
    _write_exports(result, args, "edit", pipe)
    return 0
