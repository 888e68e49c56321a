"""The toy model live in a browser: ONNX export of the toy, the page's browser-side files (``static/``) and
:func:`build_page`, which writes the page as one folder that works offline."""

from .page import build_page

__all__ = ["build_page"]
