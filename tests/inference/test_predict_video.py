"""Videos as image sets: ``predict`` reads a clip frame by frame (ids ``frame_000001``...), the
maps equal those of the same frames as image files, ``--overlay-video`` writes every frame at
the clip's frame rate, and bad video input meets the contract of docs/formats.md."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from nerveseg_cli.drawing import outline_frame
from nerveseg_cli.io.probmaps import read_probability_values
from nerveseg_cli.io.video import frame_id
from tests.conftest import run_cli
from tests.hostile import Case, cases, run_case

FRAMES, FPS = 9, 12.0
TINY = ("--device", "cpu", "--workers", "1")


def write_clip(path: Path, images: list[np.ndarray], fps: float = FPS) -> list[np.ndarray]:
    """An MJPG clip of the images (cycled to FRAMES frames); returns its frames as OpenCV
    decodes them (the codec is lossy: these, not the images, are what predict sees)."""
    height, width = images[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for i in range(FRAMES):
        writer.write(cv2.cvtColor(images[i % len(images)], cv2.COLOR_GRAY2BGR))
    writer.release()
    frames = [cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) for frame in read_video(path)[0]]
    assert len(frames) == FRAMES
    return frames


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.fixture
def clip(workspace: Path) -> tuple[Path, list[np.ndarray]]:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
              for p in sorted((workspace / "data" / "test").glob("*.tif"))]
    path = workspace / "clip.avi"
    return path, write_clip(path, images)


def test_video_frames_predict_like_the_same_frames_as_files(workspace: Path, clip) -> None:
    path, frames = clip
    folder = workspace / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{frame_id(i)}.png"), frame)
    assert run_cli("predict", workspace / "run", path, "--out", workspace / "from_video",
                   *TINY).exit_code == 0
    assert run_cli("predict", workspace / "run", folder, "--out", workspace / "from_files",
                   *TINY).exit_code == 0
    written = sorted(p.name for p in (workspace / "from_video").glob("*.png"))
    assert written == [f"{frame_id(i)}.png" for i in range(FRAMES)]
    for name in written:
        video_map = read_probability_values(workspace / "from_video" / name)
        assert video_map.shape == frames[0].shape
        np.testing.assert_array_equal(video_map,
                                      read_probability_values(workspace / "from_files" / name))


def test_parts_and_resume_of_a_video_cover_every_frame_once(workspace: Path, clip) -> None:
    path, _ = clip
    out = workspace / "parts"
    for part in ("1/2", "2/2"):
        assert run_cli("predict", workspace / "run", path, "--out", out, "--part", part,
                       "--resume", *TINY).exit_code == 0
    straight = workspace / "straight"
    assert run_cli("predict", workspace / "run", path, "--out", straight, *TINY).exit_code == 0
    names = sorted(p.name for p in straight.glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == names and len(names) == FRAMES
    for name in names:
        np.testing.assert_array_equal(read_probability_values(out / name),
                                      read_probability_values(straight / name))


def test_overlay_video_has_every_frame_at_the_clip_rate_with_the_outlines(
        workspace: Path, clip) -> None:
    path, frames = clip
    # a threshold that keeps part of each frame (the tiny run's maps are nearly flat)
    assert run_cli("predict", workspace / "run", path, "--out", workspace / "first",
                   *TINY).exit_code == 0
    values = read_probability_values(workspace / "first" / f"{frame_id(0)}.png")
    threshold = (int(values.max()) - 0.5) / 255  # foreground: the top value only
    overlay = workspace / "overlay.mp4"
    result = run_cli("predict", workspace / "run", path, "--out", workspace / "probs2",
                     "--masks", workspace / "masks", "--threshold", f"{threshold:.6f}",
                     "--overlay-video", overlay, *TINY)
    assert result.exit_code == 0, result.stderr
    first = cv2.imread(str(workspace / "masks" / f"{frame_id(0)}.png"), cv2.IMREAD_GRAYSCALE)
    assert 0 < np.count_nonzero(first) < first.size
    assert "frames_per_second" in result.stdout
    written, fps = read_video(overlay)
    assert len(written) == FRAMES and fps == pytest.approx(FPS)
    assert written[0].shape == (*frames[0].shape, 3)
    for i, frame in enumerate(written):
        mask = cv2.imread(str(workspace / "masks" / f"{frame_id(i)}.png"), cv2.IMREAD_GRAYSCALE)
        outlined = outline_frame(frames[i], (mask > 0).astype(np.uint8)).astype(np.int16)
        plain = cv2.cvtColor(frames[i], cv2.COLOR_GRAY2BGR).astype(np.int16)
        # mp4v is lossy (and halves the colour resolution): the frame is clearly nearer the
        # outlined frame than the plain one
        error = np.abs(frame.astype(np.int16) - outlined).mean()
        if 0 < np.count_nonzero(mask) < mask.size:
            assert error < 0.75 * np.abs(frame.astype(np.int16) - plain).mean(), i
        assert error < 15, i
    assert not list(workspace.glob(".overlay*")), "the staged file was left behind"


def test_overlay_video_of_several_classes_and_from_onnxruntime(workspace: Path, clip,
                                                               tmp_path: Path) -> None:
    """The ONNX Runtime engine writes the same overlay (the maps within a grey level)."""
    path, _ = clip
    model = tmp_path / "model.onnx"
    assert run_cli("export", workspace / "run", "--out", model).exit_code == 0
    overlay = tmp_path / "overlay.avi"
    result = run_cli("predict", model, path, "--engine", "onnxruntime", "--out",
                     tmp_path / "probs", "--overlay-video", overlay, *TINY)
    assert result.exit_code == 0, result.stderr
    assert len(read_video(overlay)[0]) == FRAMES


def _video_args(ws: Path, *extra: str) -> list[str | Path]:
    return ["predict", ws / "run", ws / "clip.avi", "--out", ws / "out", *TINY, *extra]


def _fake_video(ws: Path) -> list[str | Path]:
    (ws / "fake.mp4").write_text("not a video\n")
    return ["predict", ws / "run", ws / "fake.mp4", "--out", ws / "out", *TINY]


def _with_clip(args: callable) -> callable:
    def prepare(ws: Path) -> list[str | Path]:
        images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                  for p in sorted((ws / "data" / "test").glob("*.tif"))]
        write_clip(ws / "clip.avi", images)
        return args(ws)
    return prepare


HOSTILE = (
    Case("not_a_video", _fake_video, ("fake.mp4", "not a video")),
    Case("overlay_of_an_image_folder",
         lambda ws: ["predict", ws / "run", ws / "data" / "test", "--out", ws / "out",
                     "--overlay-video", ws / "o.mp4", *TINY], ("not a video file",)),
    Case("overlay_suffix_unknown",
         _with_clip(lambda ws: _video_args(ws, "--overlay-video", str(ws / "o.gif"))),
         ("o.gif", ".mp4 or .avi")),
    Case("overlay_with_resume",
         _with_clip(lambda ws: _video_args(ws, "--overlay-video", str(ws / "o.mp4"),
                                           "--resume")), ("--resume",)),
    Case("overlay_with_part",
         _with_clip(lambda ws: _video_args(ws, "--overlay-video", str(ws / "o.mp4"),
                                           "--part", "1/2")), ("--part 1/2",)),
    Case("overlay_is_the_input_video",
         _with_clip(lambda ws: _video_args(ws, "--overlay-video", str(ws / "clip.avi"),
                                           "--overwrite")), ("clip.avi", "input")),
    Case("overlay_exists",
         _with_clip(lambda ws: (ws / "o.mp4").write_bytes(b"x") and
                    _video_args(ws, "--overlay-video", str(ws / "o.mp4"))), ("o.mp4",)),
    Case("video_to_score",
         _with_clip(lambda ws: ["score", ws / "clip.avi", ws / "probs"]),
         ("clip.avi", "only predict reads videos")),
    Case("video_to_rle_encode",
         _with_clip(lambda ws: ["rle-encode", ws / "clip.avi", "--out", ws / "s.csv"]),
         ("clip.avi", "only predict reads videos")),
    Case("video_to_split",
         _with_clip(lambda ws: ["split", ws / "clip.avi", "--out", ws / "f.csv"]),
         ("clip.avi", "only predict reads videos")),
    Case("video_to_dedupe",
         _with_clip(lambda ws: ["dedupe", ws / "clip.avi", "--out", ws / "dd"]),
         ("clip.avi", "only predict reads videos")),
)


@cases(*HOSTILE)
def test_bad_video_input_is_refused(case: Case, workspace: Path) -> None:
    run_case(case, workspace)
