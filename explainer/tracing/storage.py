"""How a trace's big arrays sit in its file: uint8 attention maps with a per-map range, read lazily.

Attention maps are stored as ``uint8`` levels between each map's minimum and maximum (one
``[lo, hi]`` pair per ``[h, w]`` map, in the maps' own float dtype), so a value comes back as
``lo + q * (hi - lo) / 255``: off by at most ``(hi - lo) / 510`` plus the float16 rounding, well
inside 1/255 of the map's peak. :class:`QuantizedMaps` gives them back as floats, dequantising only
what is indexed. The other large arrays are memory-mapped from the file (copy-on-write), so opening
a trace reads its header and what a view then touches, not the whole file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

#: Levels of a quantised map (``uint8``).
LEVELS = 255
#: Arrays at least this big are memory-mapped on load; smaller ones are read at once.
LAZY_MIN_BYTES = 1 << 16
_NUMPY_DTYPES = {"U8": np.uint8, "F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64}


def quantize_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise maps ``[..., h, w]`` to uint8 levels between each map's min and max.

    Works one leading index at a time (in torch, for speed), so the float32 temporaries stay small.

    Args:
        maps: float maps, all finite.

    Returns:
        ``(levels, ranges)``: ``levels`` uint8 ``[..., h, w]``; ``ranges`` ``[..., 2]`` (lo, hi) in ``maps``' dtype.
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(maps))
    if x.ndim < 3:
        raise ValueError(f"maps must have shape [n, ..., h, w], got {list(x.shape)}.")
    levels = torch.empty(x.shape, dtype=torch.uint8)
    ranges = torch.empty((*x.shape[:-2], 2), dtype=x.dtype)
    for i in range(x.shape[0]):
        xi = x[i].float()
        lo, hi = xi.amin(dim=(-2, -1), keepdim=True), xi.amax(dim=(-2, -1), keepdim=True)  # exact values of the map
        span = hi - lo
        scale = torch.where(span > 0, LEVELS / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))
        levels[i] = ((xi - lo) * scale).round_().clamp_(0, LEVELS).to(torch.uint8)
        ranges[i, ..., 0], ranges[i, ..., 1] = lo[..., 0, 0].to(x.dtype), hi[..., 0, 0].to(x.dtype)
    return levels.numpy(), ranges.numpy()


def dequantize_maps(levels: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Maps back from :func:`quantize_maps`' output, ``lo + q * (hi - lo) / 255`` (numpy only).

    Args:
        levels: uint8 ``[..., h, w]``.
        ranges: ``[..., 2]`` (lo, hi); its dtype is the result's.

    Returns:
        ``[..., h, w]`` maps in ``ranges``' dtype.
    """
    ranges = np.asarray(ranges)
    r = ranges.astype(np.float32)
    lo = r[..., 0, None, None]
    step = (r[..., 1, None, None] - lo) / np.float32(LEVELS)
    out = np.empty(np.shape(levels), ranges.dtype)
    if out.ndim < 3:
        return (lo + np.asarray(levels, np.float32) * step).astype(ranges.dtype)
    for i in range(out.shape[0]):  # one leading index at a time: small float32 temporaries
        value = np.multiply(levels[i], step[i], dtype=np.float32)
        value += lo[i]
        out[i] = value
    return out


class QuantizedMaps:
    """Attention maps read from a file as uint8 levels, seen as floats.

    Indexing the leading axes (step, layer, head, token: ints, slices, index arrays, ``np.ix_``)
    dequantises only the maps selected; anything else (``np.asarray(maps)``, other attributes)
    dequantises the whole array once and keeps it, read-only. :meth:`Trace.save` writes the stored
    levels back unchanged, so a loaded trace re-saves byte for byte.

    Attributes:
        levels: uint8 ``[..., h, w]`` (often a memory map of the file).
        ranges: ``[..., 2]`` per-map (lo, hi), in the dtype the maps are seen in.
    """

    def __init__(self, levels: np.ndarray, ranges: np.ndarray) -> None:
        if levels.shape[:-2] != ranges.shape[:-1] or ranges.shape[-1:] != (2,):
            raise ValueError(f"levels {list(levels.shape)} and ranges {list(ranges.shape)} do not match ([..., h, w] / [..., 2]).")
        self.levels = levels  # [..., h, w] uint8
        self.ranges = ranges  # [..., 2]
        self._full: np.ndarray | None = None

    shape = property(lambda self: tuple(self.levels.shape))
    dtype = property(lambda self: self.ranges.dtype)
    ndim = property(lambda self: self.levels.ndim)
    size = property(lambda self: int(self.levels.size))
    nbytes = property(lambda self: int(self.levels.size) * self.ranges.dtype.itemsize)  # as floats

    def __len__(self) -> int:
        return len(self.levels)

    def __repr__(self) -> str:
        return f"QuantizedMaps(shape={list(self.shape)}, dtype={self.dtype}, stored as uint8)"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self._full is None:
            full = dequantize_maps(self.levels, self.ranges)
            full.flags.writeable = False
            self._full = full
        return self._full if dtype is None else self._full.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        if self._full is None and _leading_only(index, self.ndim - 2):
            ranges = self.ranges[..., None, :]  # [..., 1, 2]: index it like the levels' leading axes
            return dequantize_maps(self.levels[index], ranges[index][..., 0, :])
        return np.asarray(self)[index]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)


def _leading_only(index: Any, leading: int) -> bool:
    """Whether ``index`` selects along at most the first ``leading`` axes (no Ellipsis, None or bools over maps)."""
    parts = index if isinstance(index, tuple) else (index,)
    if len(parts) > leading:
        return False
    for part in parts:
        if part is None or part is Ellipsis:
            return False
        arr = np.asarray(part) if not isinstance(part, slice) else None
        if arr is not None and arr.dtype == bool and arr.ndim > 1:
            return False
    return True


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a safetensors file byte-for-byte reproducibly (the library's writer orders the metadata at random).

    Tensors go widest dtype first, then by name, so each starts aligned to its item size; the data is
    streamed from the arrays (memory maps are not copied first).

    Args:
        path: the file to write.
        arrays: name → array (uint8, float16/32/64 or int64).
        metadata: the ``__metadata__`` strings.
    """
    codes = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items()}
    items = []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.newbyteorder("=") not in codes:
            raise TypeError(f"array {name!r} has dtype {arr.dtype}; a trace file stores {sorted(codes.values())}.")
        items.append((name, np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))))
    items.sort(key=lambda item: (-item[1].dtype.itemsize, item[0]))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, arr in items:
        header[name] = {"dtype": codes[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}  # fmt: skip
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for _, arr in items:
            if arr.size:
                fh.write(memoryview(arr.reshape(-1).view(np.uint8)))


def read_layout(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """The safetensors header of ``path``: where its data starts and each tensor's dtype, shape and offsets."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def read_arrays(path: Path, f: Any) -> dict[str, np.ndarray]:
    """Every tensor of an open safetensors file: big ones memory-mapped (copy-on-write), the rest read now.

    Args:
        path: the file.
        f: ``safe_open(path, framework="numpy")``, for the tensors read at once.

    Returns:
        name → array.
    """
    start, header = read_layout(path)
    arrays: dict[str, np.ndarray] = {}
    for key in f.keys():
        info = header[key]
        dtype = _NUMPY_DTYPES.get(info["dtype"])
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if dtype is None or end - begin < LAZY_MIN_BYTES or np.dtype(dtype).itemsize * int(np.prod(shape)) != end - begin:
            arrays[key] = f.get_tensor(key)
        else:
            arrays[key] = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="c", offset=start + begin, shape=shape)
    return arrays


def join_attention(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Replace each uint8 ``attention/...`` array and its ``attention_range/...`` by one :class:`QuantizedMaps`."""
    out = {k: v for k, v in arrays.items() if not k.startswith("attention_range/")}
    for key, arr in arrays.items():
        if key.startswith("attention/") and arr.dtype == np.uint8:
            out[key] = QuantizedMaps(arr, np.asarray(arrays["attention_range/" + key.removeprefix("attention/")]))
    return out


def split_attention(key: str, maps: Any, quantize: bool) -> dict[str, np.ndarray]:
    """The file arrays for one attention entry: levels and ranges, or the maps as they are.

    Args:
        key: the attention key (``"cond/64x64"``).
        maps: an ndarray or :class:`QuantizedMaps`.
        quantize: store uint8 levels (maps with non-finite values are always stored as they are).

    Returns:
        File name → array.
    """
    if quantize and isinstance(maps, QuantizedMaps):  # written back as read: a loaded trace re-saves identically
        return {"attention/" + key: maps.levels, "attention_range/" + key: maps.ranges}
    arr = np.asarray(maps)
    if quantize and arr.ndim >= 3 and arr.size and np.isfinite(arr).all():
        levels, ranges = quantize_maps(arr)
        return {"attention/" + key: levels, "attention_range/" + key: ranges}
    return {"attention/" + key: arr}
