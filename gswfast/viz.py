"""Writing pictures to files: PNG and animated GIF (Pillow, imported when used).
``gswfast.render`` draws them on the device; MP4s go through ``gswfast.video``'s
``write_mp4`` / ``Mp4Writer``, beside the video reader."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


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
        str(path), save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0
    )
