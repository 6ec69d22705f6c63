"""The guide's gallery script (``make docs-gallery``) draws what the page shows: one column
per method beside the input, one row per input, a PNG for images and a GIF for clips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"


def _script():
    spec = importlib.util.spec_from_file_location("make_gallery", DOCS / "make_gallery.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_sheet_of_images_has_a_column_per_method_and_a_row_per_image(tmp_path):
    from PIL import Image

    gallery = _script()
    path = gallery.draw_sheet("images", 2, ("gradient", "gradcam"), tmp_path / "sheet")
    with Image.open(path) as sheet:
        width, height = sheet.size
    tile = gallery.TILE
    assert path.suffix == ".png"
    assert (width, height) == (3 * tile + 2 * 2, gallery.HEADER + 2 * tile)


def test_a_sheet_of_clips_is_an_animation_of_every_frame(tmp_path):
    from PIL import Image

    gallery = _script()
    path = gallery.draw_sheet("clips", 1, ("gradient",), tmp_path / "sheet")
    with Image.open(path) as sheet:
        assert path.suffix == ".gif"
        assert sheet.n_frames == 16
        assert sheet.size == (2 * gallery.TILE + 2, gallery.HEADER + gallery.TILE)


@pytest.mark.parametrize("family", ["gradients", "cams", "regions"])
def test_the_page_shows_every_committed_sheet(family):
    page = (DOCS / "guide" / "gallery.md").read_text()
    for name in (f"images_{family}.png", f"clips_{family}.gif"):
        assert (DOCS / "gallery" / name).is_file()
        assert f"../gallery/{name}" in page


def test_every_method_of_the_command_is_in_the_gallery():
    from gswfast.options import METHOD_NAMES, REGION_METHODS

    drawn = [method for methods in _script().FAMILIES.values() for method in methods]
    assert sorted(drawn) == sorted({*METHOD_NAMES, *REGION_METHODS})
