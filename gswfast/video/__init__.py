"""Video helpers: decoding and encoding with PyAV (imported when used)."""

from gswfast.video.io import MediaError, Mp4Writer, read_image, read_video, write_mp4

__all__ = ["MediaError", "Mp4Writer", "read_image", "read_video", "write_mp4"]
