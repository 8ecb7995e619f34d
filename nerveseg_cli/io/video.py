"""Video files as image sets (docs/formats.md, "Videos"): every frame one image, ids
``frame_000001`` (1-based, six digits or more), read in order by one decoder; and the overlay
video ``predict --overlay-video`` writes.

Ultrasound is recorded as clips (the Kaggle frames were cut from them); a clip is predicted
frame by frame without first extracting thousands of files.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerveseg_cli.errors import NervesegError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
# the codec each overlay container is written with (OpenCV's own encoders, always present)
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
FRAME_PREFIX = "frame_"
DEFAULT_FPS = 25.0  # when a container records no frame rate


def is_video(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in VIDEO_SUFFIXES and path.is_file()


def refuse_video(path: str | Path) -> None:
    """Raise for a video given to a command that needs image (or map) files: only predict reads
    frames."""
    raise NervesegError(f"{path}: a video; only predict reads videos (frame by frame), "
                        "this command needs image files")


def frame_id(index: int) -> str:
    """The id of frame ``index`` (0-based): ``frame_000001`` for the first."""
    return f"{FRAME_PREFIX}{index + 1:06d}"


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    frames: int
    fps: float
    width: int
    height: int


def _capture(path: Path):  # noqa: ANN202  (a cv2.VideoCapture)
    import cv2

    # FFmpeg's own log lines ("moov atom not found") would print beside nerveseg's one error
    # line; a level set beforehand is kept (-8 is FFmpeg's AV_LOG_QUIET)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise NervesegError(f"{path}: not a video OpenCV can read (mp4, avi, mov, mkv ...)")
    return capture


def probe_video(path: str | Path) -> VideoInfo:
    """Open a video and count its frames by reading through it: containers' frame counts are
    estimates, and ids must be known (for --part and --resume) before prediction starts."""
    import cv2

    path = Path(path)
    capture = _capture(path)
    try:
        ok, first = capture.read()
        if not ok:
            raise NervesegError(f"{path}: a video without a readable frame")
        frames = 1
        while capture.grab():
            frames += 1
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return VideoInfo(path, frames, fps if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS,
                     first.shape[1], first.shape[0])


def video_format(path: str | Path) -> tuple[float, tuple[int, int]]:
    """A video's frame rate (25 when its container gives none) and frame size (width,
    height), from its header: what an overlay video of it is written with."""
    import cv2

    capture = _capture(Path(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        capture.release()
    return (fps if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS), size


class VideoFrames:
    """Frames of one video by index, decoded in order by one capture (a frame behind the
    decoder, or far ahead of it, costs a seek). Thread-safe; frames come back 2-D uint8
    grayscale, as images are read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._capture = None
        self._next = 0  # the index the capture reads next
        self._lock = threading.Lock()

    def read(self, index: int) -> np.ndarray:
        import cv2

        from nerveseg_cli.io.images import to_uint8_gray

        with self._lock:
            if self._capture is None:
                self._capture = _capture(self.path)
            if index < self._next or index > self._next + 64:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                self._next = index
            while self._next < index:  # close ahead: decoding on is cheaper than a seek
                self._capture.grab()
                self._next += 1
            ok, frame = self._capture.read()
            self._next += 1
        if not ok:
            raise NervesegError(f"{self.path}: frame {index + 1} cannot be read (the video "
                                "is shorter than it was, or damaged)")
        return to_uint8_gray(frame)

    def close(self) -> None:
        with self._lock:
            if self._capture is not None:
                self._capture.release()
                self._capture = None


_open: dict[Path, VideoFrames] = {}
_open_lock = threading.Lock()


def read_frame(path: Path, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) of the video at ``path``, through one shared decoder."""
    with _open_lock:
        frames = _open.get(path)
        if frames is None:
            frames = _open[path] = VideoFrames(path)
    return frames.read(index)


def close_videos() -> None:
    with _open_lock:
        for frames in _open.values():
            frames.close()
        _open.clear()


class OverlayVideo:
    """Writes frames (BGR uint8) to a video file at a frame rate: the codec by the suffix,
    mp4v for .mp4/.mov/.mkv/.m4v, MJPG for .avi."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import cv2

        suffix = path.suffix.lower()
        if suffix not in FOURCC:
            raise NervesegError(f"{path}: an overlay video is {', '.join(sorted(FOURCC))}")
        self.path, self.size, self.frames = path, size, 0
        self._writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*FOURCC[suffix]),
                                       fps, size, True)
        if not self._writer.isOpened():
            raise NervesegError(f"{path}: OpenCV cannot write this video")

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise NervesegError(f"{self.path}: frame {self.frames + 1} is "
                                f"{frame.shape[1]}x{frame.shape[0]}, the video "
                                f"{self.size[0]}x{self.size[1]}")
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        self._writer.release()
