"""Video: the streaming explainer, and decoding/encoding helpers (PyAV, imported when used)."""

from gswfast.video.io import (
    IMAGE_SUFFIXES,
    MEDIA_SUFFIXES,
    VIDEO_SUFFIXES,
    MediaError,
    Mp4Writer,
    frame_count,
    media_kind,
    read_image,
    read_video,
    windows,
    write_mp4,
)
from gswfast.video.stream import POLICIES, StreamExplainer, WindowResult

__all__ = [
    "IMAGE_SUFFIXES",
    "MEDIA_SUFFIXES",
    "POLICIES",
    "VIDEO_SUFFIXES",
    "MediaError",
    "Mp4Writer",
    "StreamExplainer",
    "WindowResult",
    "frame_count",
    "media_kind",
    "read_image",
    "read_video",
    "windows",
    "write_mp4",
]
