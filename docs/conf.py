"""Sphinx configuration of the API reference (`make docs`; offline, warnings are errors)."""

from __future__ import annotations

import gswfast

project = "gswfast"
author = "the gswfast developers"
copyright = "2026, the gswfast developers"
release = version = gswfast.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
# The docstrings are Google style ("Args:", "Returns:"); shapes are written as [B, C, H, W].
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Signatures show the names users write (Tensor, nn.Module), not the full module paths.
autodoc_type_aliases: dict[str, str] = {}
python_use_unqualified_type_names = True
# Type names in signatures that Sphinx cannot link without intersphinx (the build is offline):
# they are shown as written instead of being reported as broken references.
nitpicky = False
default_role = "code"
exclude_patterns = ["_build", "demo"]
html_theme = "alabaster"
html_static_path: list[str] = []
