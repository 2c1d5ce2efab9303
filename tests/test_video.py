"""1-FPS decoding by seeking returns exactly the frames a full sequential decode gives at the
official frame indices; the frame rules; unusable files fail with their name."""
import av
import numpy as np
import pytest

from hourjax.data.video import (VideoError, decode_frames, fixed_frame_indices, moving_square,
                                official_frame_indices, probe, read_frames_1fps, write_video)


def _all_frames(path, size, resample):
  from PIL import Image
  with av.open(path) as src:
    if resample == "pil":     # the official processor: PIL bicubic on the full-size RGB frame
      return np.stack([np.asarray(f.to_image().resize((size, size), Image.BICUBIC)) for f in src.decode(video=0)])
    return np.stack([f.reformat(width=size, height=size, format="rgb24",
                                interpolation="BICUBIC").to_ndarray() for f in src.decode(video=0)])


# 30 FPS H.264 has B-frames that are skipped between the 1-FPS targets.
@pytest.mark.parametrize("codec,seconds,fps", [("mpeg4", 40, 8), ("libx264", 75, 6), ("libx264", 40, 30)])
def test_seeking_decode_equals_sequential_decode(tmp_path, codec, seconds, fps):
  path = str(tmp_path / "v.mp4")
  write_video(path, moving_square(seconds, fps=fps, seed=1), fps=fps, codec=codec)
  info = probe(path)
  assert (info.frames, info.fps, info.duration) == (seconds * fps, fps, seconds)
  for resample in ("pil", "swscale"):
    every = _all_frames(path, 56, resample)
    for idx in (official_frame_indices(info.frames, info.fps, min_frames=0),       # 1 FPS
                official_frame_indices(info.frames, info.fps, min_frames=128),     # short video
                fixed_frame_indices(info.frames, 32)):
      np.testing.assert_array_equal(decode_frames(path, idx, 56, resample=resample), every[idx])


@pytest.mark.parametrize("suffix,codec", [(".mkv", "libx264"), (".webm", "libvpx-vp9")])
def test_probe_counts_frames_where_the_container_has_no_count(tmp_path, suffix, codec):
  """mkv / webm hold no frame count: the frames are counted (as the official feature cache does),
  and the duration is frames / average FPS as the official loader computes it."""
  path = str(tmp_path / f"v{suffix}")
  write_video(path, moving_square(7, fps=5), fps=5, codec=codec)
  with av.open(path) as src:
    assert src.streams.video[0].frames == 0
    decoded = sum(1 for _ in src.decode(video=0))
  info = probe(path)
  assert (info.frames, info.fps, info.duration) == (decoded, 5.0, decoded / 5.0) and decoded == 35


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
