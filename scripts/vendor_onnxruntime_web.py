"""Vendor onnxruntime-web's WASM backend into explainer/live/static/vendor/onnxruntime-web/ (for the live page).

    python scripts/vendor_onnxruntime_web.py [--version 1.30.0]

Runs ``npm pack onnxruntime-web@VERSION`` in a temporary folder and writes, from its dist/ folder:

- ``ort.wasm.min.js``: unchanged, the IIFE build with only the WASM backend (a classic script: sets ``self.ort``);
- ``ort-wasm-binary.js``: a classic script setting ``SDXLive.ortWasm = {version, wasmGzipBase64, glue}``: the
  gzip of ``ort-wasm-simd-threaded.wasm`` (base64) and the text of its Emscripten glue
  ``ort-wasm-simd-threaded.mjs``. runtime.js inflates the binary with ``DecompressionStream`` and hands it to ort
  as ``env.wasm.wasmBinary``, and the glue as a blob: URL (``env.wasm.wasmPaths.mjs``): no fetch and no file
  import, so the page works from ``file://``. gzip runs with mtime 0, so the file is reproducible;
- ``LICENSE`` (the package's MIT licence) and ``SOURCE.txt`` (version, checksums, how to refresh).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "explainer" / "live" / "static" / "vendor" / "onnxruntime-web"
WASM, GLUE, IIFE = "ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.mjs", "ort.wasm.min.js"

LICENSE = """MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.30.0", help="onnxruntime-web version on npm (default: 1.30.0)")
    version = parser.parse_args().version
    with tempfile.TemporaryDirectory() as tmp:
        name = subprocess.run(["npm", "pack", f"onnxruntime-web@{version}", "--silent"], cwd=tmp, check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]  # fmt: skip
        tarball = (Path(tmp) / name).read_bytes()
        with tarfile.open(Path(tmp) / name) as tar:
            files = {n: tar.extractfile(f"package/dist/{n}").read() for n in (WASM, GLUE, IIFE)}
            package = json.loads(tar.extractfile("package/package.json").read())
    if package.get("license") != "MIT":
        raise SystemExit(f"onnxruntime-web {version} is licensed {package.get('license')!r}, not MIT: review LICENSE")
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / IIFE).write_bytes(files[IIFE])
    packed = gzip.compress(files[WASM], compresslevel=9, mtime=0)
    binary = (
        f"/* onnxruntime-web {version}: {WASM} (gzip, base64) and {GLUE}, for the live page; "
        "written by\n"
        " * scripts/vendor_onnxruntime_web.py (see SOURCE.txt). Copyright (c) Microsoft Corporation, MIT License. */\n"
        "(function (root) {\n  const ns = root.SDXLive = root.SDXLive || {};\n"
        f"  ns.ortWasm = {{version: {json.dumps(version)}, "
        f"wasmGzipBase64: '{base64.b64encode(packed).decode('ascii')}',\n"
        f"    glue: {json.dumps(files[GLUE].decode('utf-8'))}}};\n"
        "})(typeof self !== 'undefined' ? self : globalThis);\n"
    )
    (DEST / "ort-wasm-binary.js").write_text(binary, encoding="utf-8")
    (DEST / "LICENSE").write_text(LICENSE, encoding="utf-8")
    sizes = {n: (DEST / n).stat().st_size for n in (IIFE, "ort-wasm-binary.js")}
    (DEST / "SOURCE.txt").write_text(f"""onnxruntime-web {version}, vendored so that the live page runs the toy offline (WASM backend, no CDN).

Source: the npm package onnxruntime-web@{version} (`npm pack onnxruntime-web@{version}`,
sha256 of the tarball {sha256(tarball)}).
Written by scripts/vendor_onnxruntime_web.py from its dist/ folder:

  ort.wasm.min.js     dist/{IIFE} unchanged ({sizes[IIFE]} bytes; sha256 {sha256(files[IIFE])}):
                      the IIFE build with the WASM backend only, a classic script setting self.ort
  ort-wasm-binary.js  ({sizes['ort-wasm-binary.js']} bytes) a classic script setting SDXLive.ortWasm to
                      - wasmGzipBase64: base64 of gzip -9 (mtime 0) of dist/{WASM}
                        ({len(files[WASM])} bytes, sha256 {sha256(files[WASM])}; gzip {len(packed)} bytes)
                      - glue: the text of dist/{GLUE} (sha256 {sha256(files[GLUE])})
                      runtime.js inflates the binary (DecompressionStream) into env.wasm.wasmBinary and imports
                      the glue from a blob: URL (env.wasm.wasmPaths.mjs): no fetch, no file import, so the page
                      works from file:// as well as from a server.
  LICENSE             the MIT licence package.json names ("license": "MIT"; the tarball has no licence file;
                      the text is github.com/microsoft/onnxruntime's LICENSE)

Not vendored: the WebGPU / JSEP builds (their .wasm alone is 26-28 MB, over the page's size budget), the
threaded proxy worker (the page runs one WASM thread unless cross-origin isolated), source maps.

To update: python scripts/vendor_onnxruntime_web.py --version <version>, then run
tests/test_live_runtime_browser.py (it runs the page's graphs on the vendored runtime from file://).
""", encoding="utf-8")  # fmt: skip
    for n in sorted(p.name for p in DEST.iterdir()):
        print(f"{n:22s} {(DEST / n).stat().st_size:>10d} bytes")


if __name__ == "__main__":
    main()
