"""1-FPS decoding by seeking returns exactly the frames a full sequential decode gives at the
official frame indices; the frame rules; unusable files fail with their name."""
import av
import numpy as np
import pytest

from hourjax.data.video import (VideoError, decode_frames, fixed_frame_indices, moving_square,
                                official_frame_indices, probe, read_frames_1fps, write_video)


def _all_frames(path, size):
  with av.open(path) as src:
    return np.stack([f.reformat(width=size, height=size, format="rgb24",
                                interpolation="BICUBIC").to_ndarray() for f in src.decode(video=0)])


# 30 FPS H.264 has B-frames that are skipped between the 1-FPS targets.
@pytest.mark.parametrize("codec,seconds,fps", [("mpeg4", 40, 8), ("libx264", 75, 6), ("libx264", 40, 30)])
def test_seeking_decode_equals_sequential_decode(tmp_path, codec, seconds, fps):
  path = str(tmp_path / "v.mp4")
  write_video(path, moving_square(seconds, fps=fps, seed=1), fps=fps, codec=codec)
  info = probe(path)
  assert (info.frames, info.fps) == (seconds * fps, fps) and abs(info.duration - seconds) < 0.5
  every = _all_frames(path, 56)
  for idx in (official_frame_indices(info.frames, info.fps, min_frames=0),       # 1 FPS
              official_frame_indices(info.frames, info.fps, min_frames=128),     # short video
              fixed_frame_indices(info.frames, 32)):
    np.testing.assert_array_equal(decode_frames(path, idx, 56), every[idx])


def test_official_frame_rules():
  np.testing.assert_array_equal(official_frame_indices(3600 * 30, 30.0, min_frames=128),
                                np.arange(0, 3600 * 30, 30))                      # 1 FPS, no cap
  short = official_frame_indices(60 * 25, 25.0, min_frames=128)                   # 60 frames < 128
  assert len(short) == 128 and short[0] == 0 and short[-1] == 60 * 25 - 1
  np.testing.assert_array_equal(short, np.linspace(0, 1499, 128).astype(int))
  assert len(official_frame_indices(50, 25.0, min_frames=128)) == 50              # fewer frames than 128
  assert len(official_frame_indices(3600 * 30, 30.0, max_frames=32)) == 32        # stage-1 cap
  np.testing.assert_array_equal(fixed_frame_indices(1000, 4), [0, 333, 666, 999])


def test_read_frames_1fps_scales_to_siglip_range(tmp_path):
  path = str(tmp_path / "v.mp4")
  write_video(path, moving_square(12, fps=4), fps=4)
  frames, duration = read_frames_1fps(path, 28)
  assert frames.shape == (12, 28, 28, 3) and frames.dtype == np.float32
  assert -1.0 <= frames.min() < -0.8 and 0.0 < frames.max() <= 1.0 and abs(duration - 12) < 0.5


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unusable_files_fail_with_their_name(tmp_path, content):
  path = tmp_path / "bad.mp4"
  path.write_bytes(content)
  with pytest.raises(VideoError, match="bad.mp4"):
    probe(str(path))
  with pytest.raises(VideoError, match="missing.mp4"):
    probe(str(tmp_path / "missing.mp4"))
