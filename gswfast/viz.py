"""Writing pictures to files: PNG and animated GIF (Pillow, imported when used).
``gswfast.render`` draws them on the device; MP4s go through ``gswfast.video``'s
``write_mp4`` / ``Mp4Writer``, beside the video reader."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from gswfast.explain import Explanation


def save_png(image: Tensor, path: str | Path) -> None:
    """Writes uint8 ``[3, H, W]`` as PNG (Pillow)."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).cpu().contiguous().numpy()).save(str(path))


def save_gif(frames: Tensor, path: str | Path, fps: float = 8.0) -> None:
    """Writes uint8 ``[3, T, H, W]`` as a looping animated GIF (Pillow)."""
    from PIL import Image

    # Each frame's palette by fast octree quantisation: 50x faster than Pillow's default
    # median cut on an RGB frame, for pictures that are mostly flat segment colours.
    pictures = [
        Image.fromarray(f.permute(1, 2, 0).cpu().numpy()).quantize(method=Image.Quantize.FASTOCTREE)
        for f in frames.unbind(1)
    ]
    pictures[0].save(
        str(path),
        save_all=True,
        append_images=pictures[1:],
        duration=_gif_duration(fps, len(pictures)),
        loop=0,
    )


GIF_LONGEST_MS = 655_350  # a GIF frame's delay is 16 bits of centiseconds


def _gif_duration(fps: float, frames: int) -> int:
    """Milliseconds per frame at ``fps`` (1 fps for a rate that is not a positive number
    or under 0.01, as the MP4s), short enough that Pillow, which merges identical frames
    and adds their delays, never overflows a frame's delay."""
    import math

    wanted = 1000.0 / fps if math.isfinite(fps) and fps >= 0.01 else 1000.0
    return max(10, min(round(wanted), GIF_LONGEST_MS // max(1, frames)))


LEGEND_HEIGHT = 40  # rows of the strip under the command's pictures


def legend(width: int, scores: Tensor | None, caption: str) -> Tensor:
    """uint8 ``[3, LEGEND_HEIGHT, width]``, a strip to put under a picture: ``caption`` (the class,
    its score), then the colour scale of one sample's segment ``scores [K]`` as the
    picture colours them (``render.color_scores``: diverging around zero when a score is
    negative, else sequential from zero to the largest), its ends and middle labelled;
    the caption alone when ``scores`` is None (a picture without an explanation)."""
    import torch
    from PIL import Image, ImageDraw

    from gswfast import render

    if scores is None:
        strip = Image.new("RGB", (width, LEGEND_HEIGHT), (32, 32, 32))
        ImageDraw.Draw(strip).text((3, 1), caption, fill=(240, 240, 240), font=_font(11))
        return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    scores = scores.detach().float().cpu()
    scale, signed = 0.0, False
    if scores.numel():
        largest, negative = render.colour_scale(scores[None])
        scale, signed = float(largest[0]), bool(negative[0])
    low = -scale if signed else 0.0
    ramp = torch.linspace(low, scale, max(width, 2))[None]
    bar = render.color_scores(ramp)[0].round().clamp(0, 255).to(torch.uint8)  # [W, 3]
    strip = Image.new("RGB", (width, LEGEND_HEIGHT), (32, 32, 32))
    strip.paste(Image.fromarray(bar[None].expand(10, -1, -1).numpy()), (0, 16))
    draw = ImageDraw.Draw(strip)
    font = _font(11)
    draw.text((3, 1), caption, fill=(240, 240, 240), font=font)
    for text, x, anchor in (
        (f"{low:.3g}", 2, "la"),
        (f"{(low + scale) / 2:.3g}", width // 2, "ma"),
        (f"{scale:.3g}", width - 2, "ra"),
    ):
        draw.text((x, 27), text, fill=(200, 200, 200), font=font, anchor=anchor)
    return torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def class_name(class_names: Sequence[str] | None, target: int) -> str | None:
    """The name of class ``target`` where ``class_names`` has one."""
    if class_names is not None and 0 <= target < len(class_names):
        return class_names[target]
    return None


def captioned(
    picture: Tensor,
    expl: Explanation,
    b: int,
    class_names: Sequence[str] | None = None,
    note: str | None = None,
) -> Tensor:
    """``picture`` (uint8 ``[3, (T), H, W]``, sample ``b`` of ``expl`` as
    ``render.draw_picture`` draws it) with its ``legend`` below, on every frame: the
    class (its name where ``class_names`` has one), the target's logit where the method
    ran the model on the input, the method, and the colour scale."""
    import torch

    target = int(expl.target[b])
    name = class_name(class_names, target)
    words = [f"{name} (class {target})" if name else f"class {target}"]
    logits = expl.info.get("logits")
    if isinstance(logits, Tensor) and target >= 0:
        words.append(f"logit {float(logits[b, target]):.4g}")
    if note:  # a detector's box score, say
        words.append(note)
    words.append(expl.method)
    n = int(expl.num_segments[b])
    strip = legend(picture.shape[-1], expl.segment_scores[b, :n], "  ".join(words))
    if picture.dim() == 4:  # a clip: the strip under every frame
        strip = strip.unsqueeze(1).expand(-1, picture.shape[1], -1, -1)
    return torch.cat([picture.cpu(), strip], dim=-2)


class NpzWriter:
    """Writes arrays one at a time into an ``.npz`` (deflated; ``np.load`` reads it), so a
    long video's per-window labels never sit in memory together."""

    def __init__(self, path: str | Path) -> None:
        import zipfile

        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, name: str, array: np.ndarray[Any, Any] | Tensor) -> None:
        values = array.detach().cpu().numpy() if isinstance(array, Tensor) else array
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.ascontiguousarray(values), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
