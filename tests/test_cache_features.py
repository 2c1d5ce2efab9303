"""The feature cache command writes what the model's own encoder gives on the official frames,
skips existing outputs, and skips and lists unusable videos."""
import os

import jax
import numpy as np

from hourjax.convert.io import SafetensorsFile, save_params
from hourjax.data.video import decode_frames, moving_square, probe, to_siglip, write_video
from hourjax.models import build
from hourjax.data.video import cache_frame_indices as feature_frame_indices
from launch.cache_features import main
from hourjax.numerics import rel_err
from conftest import jit_apply, tiny_model


def test_frame_rule():
  np.testing.assert_array_equal(feature_frame_indices(100, 25.0), np.arange(100))
  idx = feature_frame_indices(3000, 300.0)          # 300 s -> 300 frames, last included
  assert len(idx) == 300 and idx[0] == 0 and idx[-1] == 2999
  assert len(feature_frame_indices(1000, 40.0)) == 128


def test_cache_command(tmp_path, capsys):
  cfg = tiny_model()
  params = build.init_params("hour_llava", cfg, jax.random.key(0))
  save_params(str(tmp_path / "ck"), params, "hour_llava", cfg)
  os.makedirs(tmp_path / "videos" / "sub")
  write_video(str(tmp_path / "videos" / "sub" / "a.mp4"), moving_square(6, fps=25, size=64), fps=25)
  (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00" * 64)
  args = ["--params", str(tmp_path / "ck"), "--videos", str(tmp_path / "videos"), "--out",
          str(tmp_path / "feats"), "--chunk", "64"]
  assert main(args) == 0
  out = capsys.readouterr().out
  assert "1 written, 0 already there, 1 unusable" in out and "broken.mp4" in out
  f = SafetensorsFile(str(tmp_path / "feats" / "sub" / "a.safetensors"))
  feats = f.get("vid_feat")
  assert feats.shape == (128, cfg.pool_size ** 2, cfg.vision.hidden_size)   # 150 frames, 6 s -> 128 spread
  assert float(f.metadata["duration"]) == 6.0
  video = str(tmp_path / "videos" / "sub" / "a.mp4")
  info = probe(video)
  frames = to_siglip(decode_frames(video, feature_frame_indices(info.frames, info.duration), 112))
  ref = jit_apply(build.build("hour_llava", cfg), params, frames[None], pool=True, method="encode_frames")[0]
  assert rel_err(feats, ref) < 1e-5
  main(args)
  assert "0 written, 1 already there" in capsys.readouterr().out
