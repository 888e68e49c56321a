"""The ``explainer live`` subcommand: write the toy model's live browser page, or serve it on localhost."""

from __future__ import annotations

import argparse
import functools
import http.server
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The address ``--serve`` listens on: this machine only.
HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535 (0: any free port), got {text!r}")
    return value


def add_live_command(sub: Any) -> None:
    """Add ``live`` to the ``explainer`` subcommands."""
    live = sub.add_parser(
        "live",
        help="write the toy model's live browser page (one folder), or serve it on localhost",
        description="The toy model running in the browser: type a caption and watch it denoise, with no Python. "
        "--out DIR writes the page as one folder (open DIR/index.html; works from a USB stick, no network); "
        "--serve serves it on http://127.0.0.1:PORT/ until Ctrl-C.",
    )
    where = live.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, metavar="DIR", help="folder to write the page into (created if missing)")
    where.add_argument("--serve", action="store_true", help="serve the page on localhost instead")
    live.add_argument("--port", type=_port, default=None, metavar="N",
                      help=f"with --serve: the port (default {DEFAULT_PORT}; 0 picks a free one)")  # fmt: skip
    live.set_defaults(handler=cmd_live, parser=live)


def _build(parser: argparse.ArgumentParser, out: Path, flag: str) -> Path:
    from .live import build_page

    try:
        return build_page(out)
    except (OSError, ValueError) as err:
        parser.error(f"{flag}: {' '.join(str(err).split())}")
        raise  # unreachable: parser.error exits


def cmd_live(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Write the page into ``--out``, or serve it (``--serve``) until interrupted."""
    if args.port is not None and not args.serve:
        parser.error("--port applies to --serve")
    if not args.serve:
        if args.out.exists() and not args.out.is_dir():
            parser.error(f"--out {args.out} exists and is not a folder")
        index = _build(parser, args.out, f"--out {args.out}")
        size = sum(f.stat().st_size for f in index.parent.rglob("*") if f.is_file())
        print(f"wrote the live page to {index.parent} ({size / 1e6:.1f} MB); open {index}")
        return 0
    with tempfile.TemporaryDirectory(prefix="explainer-live-") as tmp:
        index = _build(parser, Path(tmp), "--serve")
        handler = functools.partial(_QuietHandler, directory=str(index.parent))
        port = DEFAULT_PORT if args.port is None else args.port
        try:
            server = http.server.ThreadingHTTPServer((HOST, port), handler)
        except OSError as err:
            parser.error(f"--port {port}: cannot listen on {HOST}:{port} ({err.strerror or err})")
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a terminated server still removes its folder
        with server:
            print(f"serving the live page at http://{HOST}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                print("stopped", file=sys.stderr)
            finally:
                signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the right types for the page's scripts; no log line per request."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".wasm": "application/wasm", ".mjs": "text/javascript"}  # fmt: skip

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass
