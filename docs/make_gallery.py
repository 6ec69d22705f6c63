"""Draws the user guide's gallery (``make docs-gallery``): every method of gswfast on the same
demo images and the same demo clips, side by side, from the demo models shipped with the
package (``gswfast.demo``), so the pictures are reproducible on any machine.

One sheet per family of methods (input gradients, class activation maps, region methods):
rows are the inputs, the first column the input with its deciding object outlined in white,
then one column per method, each drawn as the command draws it (heat on a grey copy, segment
boundaries, the 3 best segments outlined in cyan). Images go to PNG, clips to GIF, in
``docs/gallery/``; the page ``docs/guide/gallery.md`` shows them.

    python docs/make_gallery.py [--out docs/gallery] [--images 4] [--clips 2]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gswfast import render, viz
from gswfast.demo import action_clips, load, shape_images
from gswfast.options import CAM_METHODS, REGION_METHODS
from gswfast.regions import make_explainer

FAMILIES: dict[str, tuple[str, ...]] = {
    "gradients": (
        "gradient",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "guided_backprop",
        "lime_ig",
        "banzhaf",
    ),
    "cams": CAM_METHODS,
    "regions": REGION_METHODS,
}
TILE = 128  # pixels a side of each picture in a sheet
HEADER = 18  # rows above each column for the method's name
SEED = 2026  # the demo's inputs (gswfast demo draws the same ones)
SEGMENTS = {"images": 20, "clips": 60}  # as the demo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "gallery")
    parser.add_argument("--images", type=int, default=4, help="demo images, one row each")
    parser.add_argument("--clips", type=int, default=2, help="demo clips, one row each")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for kind, count in (("images", args.images), ("clips", args.clips)):
        for family in args.families:
            path = draw_sheet(kind, count, FAMILIES[family], args.out / f"{kind}_{family}")
            print(f"wrote {path}")


def draw_sheet(kind: str, count: int, methods: Sequence[str], stem: Path) -> Path:
    """Draws ``count`` demo inputs of ``kind`` ("images" or "clips") explained by each of
    ``methods`` into ``stem``.png (images) or ``stem``.gif (clips); returns the path."""
    generator = torch.Generator().manual_seed(SEED)
    if kind == "images":
        batch, model = shape_images(count, generator=generator), load("shapes")
    else:
        batch, model = action_clips(count, generator=generator), load("actions")
    columns = [_with_object(batch.images, batch.masks)]
    for method in methods:
        explainer = make_explainer(model, method, n_segments=SEGMENTS[kind])
        columns.append(render.draw_picture(explainer(batch.images), batch.images, k=3, size=TILE))
    names = ["input, object", *methods]
    headed = [_headed(column, name) for column, name in zip(columns, names, strict=True)]
    sheet = render.side_by_side(headed, gap=2)
    if sheet.dim() == 3:
        path = stem.with_suffix(".png")
        viz.save_png(sheet, path)
    else:
        path = stem.with_suffix(".gif")
        viz.save_gif(sheet, path, fps=8)
    return path


def _with_object(images: Tensor, masks: Tensor) -> Tensor:
    """uint8 ``[B, 3, (T), H', W']``: the inputs enlarged to the tile, their deciding object
    outlined in white."""
    factor = max(1, TILE // max(images.shape[-2:]))
    rgb = render.as_rgb_uint8(images, tuple(images.shape[2:]))
    big = rgb.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    mask = masks.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
    return torch.where(render.outline(mask).unsqueeze(1), torch.tensor(255, dtype=torch.uint8), big)


def _headed(column: Tensor, name: str) -> Tensor:
    """``column [B, 3, (T), H, W]`` stacked into one picture ``[3, (T), B * H + HEADER, W]``
    under a strip with ``name``."""
    from PIL import Image, ImageDraw, ImageFont

    width = column.shape[-1]
    strip = Image.new("RGB", (width, HEADER), (32, 32, 32))
    ImageDraw.Draw(strip).text(
        (3, 3), name, fill=(240, 240, 240), font=ImageFont.load_default(size=11)
    )
    header = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    if column.dim() == 5:  # clips: the strip on every frame
        header = header.unsqueeze(1).expand(-1, column.shape[2], -1, -1)
    return torch.cat([header, *column.unbind(0)], dim=-2)


if __name__ == "__main__":
    main()
