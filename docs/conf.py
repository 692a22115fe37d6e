"""Sphinx configuration for the jaxreg docs (MyST Markdown + autodoc)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "jaxreg"
author = "the jaxreg developers"
copyright = "2026, the jaxreg developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
nitpicky = False


def _init_signature(app, what, name, obj, options, signature, return_annotation):
    """Show a class's ``__init__`` signature where autodoc found only
    ``(*args, **kwargs)`` (the metaclass ``__call__`` of ``flax.nnx`` modules)."""
    import inspect

    if what != "class" or signature != "(*args, **kwargs)":
        return None
    try:
        sig = inspect.signature(obj.__init__)
    except (TypeError, ValueError):
        return None
    # Drop ``self``; annotations go to the description (autodoc_typehints).
    params = [p.replace(annotation=p.empty) for p in list(sig.parameters.values())[1:]]
    return str(sig.replace(parameters=params, return_annotation=sig.empty)), None


def setup(app):
    app.connect("autodoc-process-signature", _init_signature)
