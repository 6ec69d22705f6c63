"""Reading images and videos into uint8 tensors, writing MP4, with clear errors.

PyAV (FFmpeg) decodes and encodes video; Pillow reads images. Both load on first use, so
``import gswfast`` stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})


class MediaError(ValueError):
    """A file that is missing, unreadable or not the media it claims to be."""


def read_image(path: str | Path) -> Tensor:
    """uint8 ``[3, H, W]`` RGB of a PNG/JPEG/... file."""
    from PIL import Image, UnidentifiedImageError

    path = _existing(path)
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            rgb.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MediaError(f"{path}: cannot read it as an image ({error})") from None
    import numpy as np

    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def read_video(path: str | Path) -> tuple[Iterator[Tensor], float]:
    """An iterator over the frames (uint8 ``[3, H, W]`` RGB) of a video file, decoded one at a
    time (constant memory), and its frame rate."""
    import av

    path = _existing(path)
    try:
        container = av.open(str(path))
        stream = next(s for s in container.streams if s.type == "video")
    except (av.error.FFmpegError, StopIteration, OSError) as error:
        raise MediaError(f"{path}: cannot decode it as a video ({error or 'no video stream'})") from None
    rate = float(stream.average_rate or stream.guessed_rate or 25)

    def frames() -> Iterator[Tensor]:
        try:
            for frame in container.decode(stream):
                yield torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous()
        except av.error.FFmpegError as error:
            raise MediaError(f"{path}: the video is corrupt ({error})") from None
        finally:
            container.close()

    return frames(), rate


def windows(frames: Iterator[Tensor], length: int, stride: int, size: int) -> Iterator[tuple[int, Tensor]]:
    """(first frame index, clip uint8 ``[3, T, size, size]``) for each full window of
    ``length`` frames every ``stride`` frames, resized; only one window of frames is held."""
    from gswfast.viz import resize

    buffer: list[Tensor] = []
    start = 0
    for frame in frames:
        buffer.append(resize(frame[None], size)[0])
        if len(buffer) == length:
            yield start, torch.stack(buffer, 1)
            buffer = buffer[stride:] if stride < length else []
            start += stride
            if stride > length:  # skip the frames between windows
                for _ in range(stride - length):
                    if next(frames, None) is None:
                        return


class Mp4Writer:
    """Writes uint8 frames ``[3, T, H, W]`` to an H.264 MP4 as they come (constant memory).
    Odd sizes are padded to even ones, as yuv420p needs."""

    def __init__(self, path: str | Path, fps: float = 8.0) -> None:
        import av

        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=max(1, round(fps)))
        self._stream.pix_fmt = "yuv420p"
        self._size: tuple[int, int] | None = None

    def write(self, frames: Tensor) -> None:
        import av

        clip = frames.cpu()
        clip = torch.nn.functional.pad(clip, (0, clip.shape[-1] % 2, 0, clip.shape[-2] % 2), mode="replicate")
        if self._size is None:
            self._size = (clip.shape[-2], clip.shape[-1])
            self._stream.height, self._stream.width = self._size
        for frame in clip.unbind(1):
            image = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
            for packet in self._stream.encode(image):
                self._container.mux(packet)

    def close(self) -> None:
        if self._size is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_mp4(frames: Tensor, path: str | Path, fps: float = 8.0) -> None:
    """Writes uint8 ``[3, T, H, W]`` as an H.264 MP4."""
    with Mp4Writer(path, fps) as writer:
        writer.write(frames)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")
    return path
