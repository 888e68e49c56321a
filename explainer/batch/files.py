"""File access of a batch: any local path or fsspec URL, atomic writes on local disk."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

def _filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path in it)`` for a local path or a URL."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path.rstrip("/") or path


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _parent(url: str) -> str:
    url = str(url).rstrip("/")
    return url.rsplit("/", 1)[0] if "/" in url else os.getcwd()


def _join(base: str, path: str) -> str:
    """``path`` relative to ``base`` unless it is absolute or a URL."""
    if "://" in path or os.path.isabs(path) or not base:
        return path
    return base.rstrip("/") + "/" + path


def _write_bytes(fs: Any, path: str, data: bytes) -> None:
    """Write a whole file; on local disk through a temporary name and a rename (atomic)."""
    if _is_local(fs):
        tmp = f"{path}.part{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _save_trace(fs: Any, path: str, tr: Any) -> int:
    """Save a trace to ``path`` (any filesystem); returns its size in bytes."""
    if _is_local(fs):
        tmp = f"{path}.part{os.getpid()}"
        tr.save(tmp)
        os.replace(tmp, path)
        return os.path.getsize(path)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / "trace.safetensors"
        tr.save(local)
        fs.put_file(str(local), path)
        return local.stat().st_size


def _read_image(path: str) -> Any:
    from PIL import Image

    fs, local = _filesystem(path)
    if not fs.isfile(local):
        raise FileNotFoundError(f"no image file at {path}")
    with fs.open(local, "rb") as f, Image.open(f) as opened:
        return opened.copy()
