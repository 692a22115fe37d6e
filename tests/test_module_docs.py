"""The adapters' module docstrings: composed from the text every adapter shares
(``jaxreg._layers``: what a module does, its fields, the paper) and each
adapter's own (summary, notes, examples), complete for every module."""

import inspect

import pytest

import jaxreg.equinox
import jaxreg.linen
import jaxreg.nnx
from jaxreg import _layers

ADAPTERS = {"linen": jaxreg.linen, "nnx": jaxreg.nnx, "equinox": jaxreg.equinox}
HEADING = {"linen": "Attributes:", "nnx": "Args:", "equinox": "Attributes:"}
FAMILY = [
    "Dropout",
    "SpatialDropout",
    "GaussianDropout",
    "GaussianNoise",
    "AlphaDropout",
    "DropPath",
    "DropBlock",
]


def _doc(adapter: str, name: str) -> str:
    return inspect.getdoc(getattr(ADAPTERS[adapter], name))


def _section(doc: str, heading: str) -> str:
    return doc.split(f"\n{heading}\n", 1)[1].split("\n\n", 1)[0]


def _entries(section: str) -> dict[str, str]:
    """A section's entries by name, each joined into one line."""
    entries = {}
    for line in section.splitlines():
        if line[2] != " ":
            name, text = line.strip().split(": ", 1)
            entries[name] = text
        else:
            entries[name] += " " + line.strip()
    return entries


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("name", _layers.MODULES)
def test_every_parameter_is_documented_in_signature_order(adapter, name):
    cls = getattr(ADAPTERS[adapter], name)
    doc = _doc(adapter, name)
    documented = list(_entries(_section(doc, HEADING[adapter])))
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert documented == [p for p in params if p not in ("parent", "name")]
    assert doc.splitlines()[0].endswith(".")  # the adapter's own summary line
    assert "\nExamples:\n  >>> " in doc
    assert _section(doc, "References:").strip()


@pytest.mark.parametrize("name", _layers.MODULES)
def test_the_adapters_cite_the_same_paper(name):
    references = {_section(_doc(a, name), "References:") for a in ADAPTERS}
    assert len(references) == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("name", FAMILY)
def test_a_family_module_describes_its_fields_with_the_shared_text(adapter, name):
    layer = getattr(ADAPTERS[adapter], name).LAYER
    shared = _entries(_section(inspect.cleandoc(layer.doc.text), "Attributes:"))
    own = _entries(_section(_doc(adapter, name), HEADING[adapter]))
    for field in layer.fields:
        assert own[field].removesuffix(" Keyword only.") == shared[field]


def test_a_parameter_without_text_fails_when_the_class_is_defined():
    doc = _layers.Doc(
        """
        What it does.

        Attributes:
          a: the first.

        References:
          A paper. https://example.org
        """
    )
    with pytest.raises(TypeError, match="`b` is undocumented"):

        @_layers.document(doc, "Args", {})
        class Module:
            """Summary."""

            def __init__(self, a, b):
                pass


def test_keyword_only_parameters_are_marked_where_asked():
    doc = _layers.Doc(
        """
        Attributes:
          a: the first.
          b: the second.

        References:
          A paper.
        """
    )

    @_layers.document(doc, "Attributes", {}, mark_keyword_only=True)
    class Module:
        """Summary.

        Examples:
          >>> 1
          1
        """

        def __init__(self, a, *, b):
            pass

    assert _section(inspect.getdoc(Module), "Attributes:") == (
        "  a: the first.\n  b: the second. Keyword only."
    )
