"""Every public callable of the package documents itself with an example or a notebook.

The rule: each function and class named in ``explainer.__all__`` has a docstring that holds an example
(a ``>>>`` line or an ``Example:`` / ``Examples:`` section) or names a classroom notebook
(``notebooks/NN_name.ipynb``) that exists. Public methods of those classes (properties excepted) need
a docstring. Data (``SCHEDULERS``) is not callable and is documented where it is defined.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import explainer

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXAMPLE = re.compile(r"^\s*>>>|^\s*Examples?:\s*$", re.MULTILINE)
NOTEBOOK_LINK = re.compile(r"notebooks/(\d\d_\w+\.ipynb)")

CALLABLES = sorted(name for name in explainer.__all__ if callable(getattr(explainer, name)))


def _has_example(doc: str) -> bool:
    return bool(EXAMPLE.search(doc)) or any((NOTEBOOKS / name).is_file() for name in NOTEBOOK_LINK.findall(doc))


@pytest.mark.parametrize("name", CALLABLES)
def test_public_callable_has_an_example_or_a_notebook(name: str) -> None:
    obj = getattr(explainer, name)
    doc = inspect.getdoc(obj) or ""
    where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)}"
    assert doc.strip(), f"explainer.{name} ({where}) has no docstring"
    assert _has_example(doc), (
        f"explainer.{name} ({where}): add an example ('>>>' lines or an 'Example:' section) or the path of "
        "a notebook that shows it (notebooks/NN_name.ipynb) to its docstring"
    )


@pytest.mark.parametrize("name", [n for n in CALLABLES if inspect.isclass(getattr(explainer, n))])
def test_public_methods_have_docstrings(name: str) -> None:
    cls = getattr(explainer, name)
    missing = []
    for attr, value in vars(cls).items():
        if attr.startswith("_") or isinstance(value, property):
            continue
        func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if callable(func) and not (inspect.getdoc(func) or "").strip():
            missing.append(attr)
    assert not missing, f"explainer.{name}: public methods without a docstring: {missing}"


def test_the_rule_sees_examples_and_notebooks() -> None:
    assert _has_example("Do it.\n\nExample:\n    >>> do()")
    assert _has_example("Do it.\n\nExamples:\n    do()")
    assert _has_example("Shown in notebooks/00_quickstart.ipynb.")
    assert not _has_example("Shown in notebooks/99_missing.ipynb.")   # the notebook must exist
    assert not _has_example("Returns an example value.")
    assert {"trace", "Trace", "export", "load_pipeline"} <= set(CALLABLES)
