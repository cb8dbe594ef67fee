"""Every registered loss documents itself the same way (issue: summary, equation, Args, Shape, Reference, example)."""

import inspect
import re

import pytest

pytest.importorskip("torch")

import kdimpl  # noqa: E402

NAMES = kdimpl.list_losses()
SECTIONS = ("Args:", "Shape:", "Reference:", "Example:")


def _section(doc: str, title: str) -> str:
    """The text of one Google-style section, up to the next section header."""
    body = doc.split(title, 1)[1]
    following = re.search(r"^\s{0,4}[A-Z][A-Za-z ]+:\s*$", body, flags=re.M)
    return body[: following.start()] if following else body


@pytest.mark.parametrize("name", NAMES)
def test_function_docstring_has_every_section(name):
    doc = inspect.getdoc(kdimpl.get_loss_function(name))
    assert doc and doc.splitlines()[0].strip(), f"{name}: no one-line summary"
    missing = [section for section in SECTIONS if section not in doc]
    assert not missing, f"{name}: docstring lacks {missing}"
    assert ".. math::" in doc, f"{name}: no equation"
    assert ">>>" in _section(doc, "Example:"), f"{name}: the example is not a doctest"


@pytest.mark.parametrize("name", NAMES)
def test_every_argument_is_documented(name):
    function = kdimpl.get_loss_function(name)
    args = _section(inspect.getdoc(function), "Args:")
    undocumented = [p for p in inspect.signature(function).parameters if not re.search(rf"\b{p}\b", args)]
    assert not undocumented, f"{name}: Args does not describe {undocumented}"


@pytest.mark.parametrize("name", NAMES)
def test_reference_names_year_arxiv_and_official_code(name):
    reference = _section(inspect.getdoc(kdimpl.get_loss_function(name)), "Reference:")
    assert re.search(r"\b(19|20)\d\d\b", reference), f"{name}: no year in Reference"
    assert re.search(r"arXiv:\d{4}\.\d{4,5}|no arXiv version", reference), f"{name}: no arXiv id (or 'no arXiv version')"
    assert re.search(r"@[0-9a-f]{7}|commit [0-9a-f]{7}|[Nn]o official code", reference), (
        f"{name}: Reference names neither the official code's commit nor the absence of official code"
    )


@pytest.mark.parametrize("name", NAMES)
def test_module_twin_points_to_its_function(name):
    module_doc = inspect.getdoc(kdimpl.get_loss(name)) or ""
    assert kdimpl.get_loss_function(name).__name__ in module_doc, f"{name}: module docstring does not name its function"
