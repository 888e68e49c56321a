"""Library notices for features the package never uses are dropped at import; real warnings still show."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from explainer import _quiet

TORCHVISION = (
    "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for backward "
    "compatibility. Install torchvision to use the default backend, or import `CLIPImageProcessorPil` directly."
)
ACCELERATE = (
    "Cannot initialize model with low cpu memory usage because `accelerate` was not found in the environment. "
    "Defaulting to `low_cpu_mem_usage=False`."
)

# A fresh interpreter, as a user's first cell: import, load the toy model, then log real warnings
# through the very loggers that carry the dropped notices.
SCRIPT = """
import logging, transformers
import explainer
before = transformers.logging.get_verbosity()
explainer.load_pipeline("toy", device="cpu")
assert transformers.logging.get_verbosity() == before
logging.getLogger("transformers.utils.import_utils").warning("REAL-1 a transformers warning")
logging.getLogger("diffusers.pipelines.pipeline_utils").warning("REAL-2 a diffusers warning")
logging.getLogger("diffusers.models.modeling_utils").warning("REAL-3 Cannot initialize model, another reason")
import warnings
warnings.warn("REAL-4 a Python warning")
"""


def test_first_contact_is_quiet_and_real_warnings_still_show():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert "requires torchvision" not in err and "ImageProcessorPil" not in err, err[-3000:]
    assert "accelerate" not in err, err[-3000:]
    for tag in ("REAL-1", "REAL-2", "REAL-3", "REAL-4"):
        assert tag in err, (tag, err[-3000:])


def _emit(name: str, message: str) -> list[str]:
    """Log ``message`` on logger ``name``; return what reached a handler on it."""
    logger = logging.getLogger(name)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return seen


def test_filters_are_scoped_to_their_logger_and_message():
    _quiet.install()
    _quiet.install()  # idempotent
    for name, _ in _quiet.KNOWN_NOTICES:
        assert sum(isinstance(f, _quiet.KnownNoticeFilter) for f in logging.getLogger(name).filters) == 1
    assert _emit("transformers.utils.import_utils", TORCHVISION) == []
    assert _emit("diffusers.pipelines.pipeline_utils", ACCELERATE) == []
    assert _emit("diffusers.models.modeling_utils", ACCELERATE) == []
    # the same text on another logger, and another text on the same logger, pass
    assert _emit("transformers.models.clip", TORCHVISION) == [TORCHVISION]
    assert _emit("diffusers.pipelines.pipeline_utils", TORCHVISION) == [TORCHVISION]
    other = "`CLIPImageProcessor` failed to load: its config is broken"
    assert _emit("transformers.utils.import_utils", other) == [other]
