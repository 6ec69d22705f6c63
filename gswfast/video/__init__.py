"""Video: the streaming explainer, and decoding/encoding helpers (PyAV, imported when used)."""

from gswfast.video.io import MediaError, Mp4Writer, read_image, read_video, write_mp4
from gswfast.video.stream import POLICIES, StreamExplainer, WindowResult

__all__ = ["POLICIES", "MediaError", "Mp4Writer", "StreamExplainer", "WindowResult", "read_image", "read_video",
           "write_mp4"]
