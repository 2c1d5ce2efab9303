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


def _write(path, frames, codec="libx264", pts=None, time_base=None, pix_fmt="yuv420p", rotation=None):
  """A real encoder's file with explicit timestamps (variable rate, start offsets) or a display
  matrix (PyAV's set_display_rotation: counter-clockwise degrees, then mirroring)."""
  from fractions import Fraction
  with av.open(path, "w") as out:
    stream = out.add_stream(codec, rate=8)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = pix_fmt
    if time_base is not None:
      stream.time_base = Fraction(time_base)
      stream.codec_context.time_base = Fraction(time_base)
    if rotation is not None:
      stream.set_display_rotation(*rotation)
    for i, f in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(f, format="rgb24")
      if pts is not None:
        frame.pts, frame.time_base = int(pts[i]), Fraction(time_base)
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def _raw_frames(path):
  with av.open(path) as src:
    return [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]


def _pil(a, size):
  from PIL import Image
  return np.asarray(Image.fromarray(np.ascontiguousarray(a)).resize((size, size), Image.BICUBIC))


# (counter-clockwise degrees, hflip, vflip): the eight EXIF orientations
ORIENTATIONS = [(0, False, False), (90, False, False), (180, False, False), (-90, False, False),
                (0, True, False), (0, False, True), (90, True, False), (-90, True, False)]


@pytest.mark.parametrize("rotation", ORIENTATIONS)
def test_frames_are_decoded_upright_as_a_player_shows_them(tmp_path, rotation):
  """A phone's portrait video is stored landscape with a display matrix: the frames come out as
  PyAV documents the matrix (rotate counter-clockwise, then mirror), for both resizers."""
  deg, hflip, vflip = rotation
  path = str(tmp_path / "v.mp4")
  frames = moving_square(6, fps=8, size=64)[:, :, :48]         # 64 x 48: not square
  frames[:, :8, :8] = (255, 0, 0)                                # a corner marker
  _write(path, frames, rotation=rotation)
  raw = _raw_frames(path)

  def upright(a):
    a = np.rot90(a, deg // 90)
    return a[::-1 if vflip else 1, ::-1 if hflip else 1]
  idx = official_frame_indices(len(raw), 8.0, min_frames=0)
  got = decode_frames(path, idx, 40)
  np.testing.assert_array_equal(got, np.stack([_pil(upright(raw[i]), 40) for i in idx]))
  small = decode_frames(path, idx, 40, resample="swscale")
  with av.open(path) as src:
    ref = [np.ascontiguousarray(upright(f.reformat(width=40, height=40, format="rgb24",
                                                   interpolation="BICUBIC").to_ndarray())) for f in src.decode(video=0)]
  np.testing.assert_array_equal(small, np.stack([ref[i] for i in idx]))
  if deg in (90, -90):       # the marker really moved to where a player shows it
    marker = np.argwhere((got[0][..., 0] > 200) & (got[0][..., 1] < 80))
    assert len(marker)


@pytest.mark.parametrize("suffix,codec,pix_fmt,shape", [
    (".mkv", "libx264", "yuv420p", (50, 82)), (".webm", "libvpx-vp9", "yuv420p", (36, 200)),
    (".mov", "libx264", "yuv420p", (72, 40)), (".mkv", "ffv1", "yuv444p", (61, 97)),       # odd sizes
    (".avi", "mpeg4", "yuv420p", (48, 64))])
def test_other_containers_and_odd_sizes_decode_like_a_sequential_decode(tmp_path, suffix, codec, pix_fmt, shape):
  path = str(tmp_path / f"v{suffix}")
  frames = moving_square(9, fps=8, size=max(shape), seed=3)[:, :shape[0], :shape[1]]
  _write(path, np.ascontiguousarray(frames), codec=codec, pix_fmt=pix_fmt)
  raw = _raw_frames(path)
  info = probe(path)
  assert info.frames == len(raw) == 72
  for idx in (official_frame_indices(info.frames, info.fps, min_frames=0), fixed_frame_indices(info.frames, 20)):
    np.testing.assert_array_equal(decode_frames(path, idx, 32), np.stack([_pil(raw[i], 32) for i in idx]))


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate_and_start_offsets_index_frames_by_position(tmp_path, suffix):
  """decord (the official loaders) counts frames: frame i is the i-th one shown, whatever the
  timestamps. Irregular gaps and a stream that starts 7 s in keep that meaning, by seeking."""
  rng = np.random.default_rng(0)
  n = 120
  gaps = rng.choice([1, 2, 5, 11], size=n)             # ms-ish ticks of 1/1000 s, irregular
  pts = 7000 + np.concatenate([[0], np.cumsum(gaps[:-1] * 40)])
  path = str(tmp_path / f"v{suffix}")
  frames = moving_square(15, fps=8, size=48, seed=5)[:n]
  _write(path, frames, pts=pts, time_base="1/1000")
  raw = _raw_frames(path)
  assert len(raw) == n
  info = probe(path)
  assert info.frames == n
  for idx in (official_frame_indices(n, info.fps, min_frames=0), fixed_frame_indices(n, 17),
              np.array([0, 1, 2, 60, 61, 118, 119])):
    got = decode_frames(path, idx, 24, seek_gap=0.05)
    np.testing.assert_array_equal(got, np.stack([_pil(raw[i], 24) for i in idx]))
