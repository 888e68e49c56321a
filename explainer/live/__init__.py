"""The toy model live in a browser: ONNX export of the toy and the page's browser-side files (``static/``)."""
