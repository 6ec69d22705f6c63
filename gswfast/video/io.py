"""Reading images and videos into uint8 tensors, writing MP4, with clear errors.

PyAV (FFmpeg) decodes and encodes video; Pillow reads images. Both load on first use, so
``import gswfast`` stays light.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
# GIFs are videos when animated (more than one frame), images otherwise.
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES | {".gif"}


class MediaError(ValueError):
    """A file that is missing, unreadable or not the media it claims to be."""


class _FloatImage(Exception):
    """Pillow's mode F: float values with no fixed range."""


def read_image(path: str | Path) -> Tensor:
    """uint8 ``[3, H, W]`` RGB of a PNG/JPEG/... file, the way up its EXIF orientation says
    (as viewers show it: phones store photos sideways)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _existing(path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode == "F":  # 0..1? 0..255? converting clips it to black or white
                raise _FloatImage
            if image.mode.startswith("I"):  # 16-bit (or 32-bit) grey: scale, do not clip at 255
                return _grey_to_rgb8(image)
            rgb = image.convert("RGB")
    except _FloatImage:
        raise MediaError(
            f"{path}: a floating-point image (Pillow mode F) has no fixed value range; save it "
            "with 8 or 16 bits per channel"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MediaError(f"{path}: cannot read it as an image ({error})") from None
    import numpy as np

    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _grey_to_rgb8(image: Image.Image) -> Tensor:
    """uint8 ``[3, H, W]`` of a Pillow ``I;16*`` or ``I`` image (16-bit range 0..65535)."""
    import numpy as np

    values = np.asarray(image).astype(np.float64)
    grey = torch.from_numpy(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8))
    return grey.expand(3, *grey.shape).contiguous()


def media_kind(path: str | Path) -> str | None:
    """``"image"``, ``"video"`` or None (not a media suffix), from the suffix; a GIF is a
    video when it has more than one frame (an unreadable GIF counts as an image, whose
    reader then says what is wrong)."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".gif":
        return "video" if _gif_frames(Path(path)) > 1 else "image"
    return None


def _gif_frames(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # missing or corrupt: the reader reports it
        return 1


def frame_count(path: str | Path) -> int:
    """Frames of a video: from the container's header when it has the count (MP4, MOV,
    AVI), else counted from its packets (no decoding); 0 if it cannot be read."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return _gif_frames(path) if path.is_file() else 0
    try:
        import av

        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.type == "video")
            if stream.frames > 0:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except Exception:  # unreadable: the reader reports why when the video is explained
        return 0


def read_video(path: str | Path) -> tuple[Iterator[Tensor], float]:
    """An iterator over the frames (uint8 ``[3, H, W]`` RGB) of a video file, decoded one at a
    time (constant memory), and its frame rate. Frames come upright: a phone clip's display
    rotation (its display matrix, PyAV's ``frame.rotation``) is applied, as players and
    EXIF orientation for images do."""
    import av

    path = _existing(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise MediaError(f"{path}: cannot decode it as a video ({error})") from None
    # streams.video: the streams of type "video", typed as VideoStream (so decode gives
    # VideoFrame)
    if not container.streams.video:  # sound only, subtitles...
        container.close()
        raise MediaError(f"{path}: cannot decode it as a video (no video stream)")
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 25)

    def frames() -> Iterator[Tensor]:
        try:
            for frame in container.decode(stream):
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield upright(pixels, getattr(frame, "rotation", 0)).contiguous()
        except av.error.FFmpegError as error:
            raise MediaError(f"{path}: the video is corrupt ({error})") from None
        finally:
            container.close()

    return frames(), rate


def upright(frame: Tensor, rotation: float) -> Tensor:
    """``frame [C, H, W]`` as displayed: ``rotation`` is the display matrix's angle in
    degrees, counterclockwise (FFmpeg's ``av_display_rotation_get``), so the picture turns
    by ``-rotation`` (a phone's "rotate 90" tag reads -90: a quarter turn clockwise), to the
    nearest quarter turn."""
    quarters = round(-float(rotation or 0) / 90) % 4  # clockwise quarter turns
    return torch.rot90(frame, k=-quarters, dims=(-2, -1)) if quarters else frame


def remember_shape(frames: Iterator[Tensor]) -> tuple[Iterator[Tensor], list[tuple[int, int]]]:
    """The frames, and a list that holds the first frame's ``(H, W)`` once it is read."""
    shape: list[tuple[int, int]] = []

    def walk() -> Iterator[Tensor]:
        for frame in frames:
            if not shape:
                shape.append((frame.shape[-2], frame.shape[-1]))
            yield frame

    return walk(), shape


def window_starts(count: int, length: int, stride: int, tail: bool = True) -> list[int]:
    """First frames of the windows ``windows()`` yields for a video of ``count`` frames:
    every ``stride`` frames, plus (``tail``) one aligned to the end when the regular windows
    leave frames after their end. Empty when the video is shorter than one window."""
    if count < length:
        return []
    starts = list(range(0, count - length + 1, stride))
    if tail and starts[-1] + length < count:
        starts.append(count - length)
    return starts


def windows(
    frames: Iterator[Tensor], length: int, stride: int, size: int
) -> Iterator[tuple[int, Tensor]]:
    """(first frame index, clip uint8 ``[3, T, size, size]``) for each full window of
    ``length`` frames every ``stride`` frames, resized, and a last window aligned to the end
    of the video when the regular ones leave frames after their end (so every frame at the
    end is covered); only one window of frames is held."""
    from gswfast.render import resize_frames

    recent: collections.deque[Tensor] = collections.deque(maxlen=length)
    start, last_end, index = 0, -1, -1
    for index, frame in enumerate(frames):
        recent.append(resize_frames(frame[None], size)[0])
        if index == start + length - 1:
            yield start, torch.stack(tuple(recent), 1)
            last_end, start = index, start + stride
    if index > last_end and index + 1 >= length:  # the tail: a window ending at the last frame
        yield index + 1 - length, torch.stack(tuple(recent), 1)


def _frame_rate(fps: float) -> Fraction:
    """``fps`` as the exact fraction a container stores (29.97... as 30000/1001, a
    detector's 8 fps video at stride 3 as 8/3); 1 for a rate that is not a positive
    number or under 0.01 (a broken header)."""
    if not (math.isfinite(fps) and fps >= 0.01):
        return Fraction(1)
    return Fraction(fps).limit_denominator(1001)


class Mp4Writer:
    """Writes uint8 frames ``[3, T, H, W]`` to an H.264 MP4 as they come (constant memory).
    Odd sizes are padded to even ones, as yuv420p needs.

    ``background``: encode on a thread of its own while the caller goes on (the next window
    is explained as this one encodes; PyAV lets go of the GIL inside the encoder). At most
    ``_QUEUED`` writes wait; an encoding error is raised by the next ``write`` or by
    ``close``, which waits for the queue to drain."""

    _QUEUED = 4

    def __init__(self, path: str | Path, fps: float = 8.0, background: bool = False) -> None:
        import av

        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=_frame_rate(fps))
        self._stream.pix_fmt = "yuv420p"
        # x264's "veryfast" preset: 3-4x less encoding time than its default "medium" for
        # pictures of flat segment colours, at the same constant quality (CRF 23)
        self._stream.options = {"preset": "veryfast"}
        self._size: tuple[int, int] | None = None
        self._queue: queue.Queue[Tensor | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if background:
            self._queue = queue.Queue(maxsize=self._QUEUED)
            self._thread = threading.Thread(target=self._drain, name="gswfast-mp4", daemon=True)
            self._thread.start()

    def write(self, frames: Tensor) -> None:
        if self._queue is None:
            self._encode(frames.cpu())
            return
        self._raise_if_failed()
        self._queue.put(frames.cpu().clone())  # the caller may reuse its tensor

    def _drain(self) -> None:
        assert self._queue is not None  # started with a queue
        while (frames := self._queue.get()) is not None:
            if self._error is None:  # after a failure, only empty the queue
                try:
                    self._encode(frames)
                except BaseException as error:
                    self._error = error

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the MP4 failed: {self._error}") from self._error

    def _encode(self, clip: Tensor) -> None:
        import av

        clip = torch.nn.functional.pad(
            clip, (0, clip.shape[-1] % 2, 0, clip.shape[-2] % 2), mode="replicate"
        )
        if self._size is None:
            self._size = (clip.shape[-2], clip.shape[-1])
            self._stream.height, self._stream.width = self._size
        for frame in clip.unbind(1):
            image = av.VideoFrame.from_ndarray(
                frame.permute(1, 2, 0).contiguous().numpy(), format="rgb24"
            )
            for packet in self._stream.encode(image):
                self._container.mux(packet)

    def close(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        try:
            self._raise_if_failed()
            if self._size is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
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
