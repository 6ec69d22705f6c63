"""The API reference (docs/, built by `make docs`) documents every public name."""

from __future__ import annotations

import re
from pathlib import Path

import gswfast
import gswfast.metrics
import gswfast.ops
import gswfast.video

API = Path(__file__).resolve().parents[1] / "docs" / "api.rst"
# Modules documented whole with `automodule :members:`; their __all__ lists the public names.
WHOLE_MODULES = (gswfast.metrics, gswfast.ops)


def _documented() -> set[str]:
    return set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", API.read_text(), flags=re.MULTILINE))


def test_every_public_name_of_the_package_and_of_gswfast_video_is_in_the_reference():
    documented = _documented()
    wanted = {
        f"gswfast.{name}" for name in gswfast.__all__ if name not in ("attribution", "metrics")
    }
    wanted |= {f"gswfast.video.{name}" for name in gswfast.video.__all__}
    assert not wanted - documented, f"add to docs/api.rst: {sorted(wanted - documented)}"


def test_modules_documented_whole_list_their_public_names():
    documented = _documented()
    for module in WHOLE_MODULES:
        assert module.__name__ in documented
        # functions and classes defined there, and the constants annotated there
        defined = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        }
        defined |= {name for name in vars(module).get("__annotations__", {}) if name.isupper()}
        assert defined <= set(module.__all__), (
            f"{module.__name__}.__all__ lacks {defined - set(module.__all__)}"
        )
