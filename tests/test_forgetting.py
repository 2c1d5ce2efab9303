"""Forgetting: the official index formulas, determinism for a key, and the ablation variants."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from hourjax.models import forgetting as fg

OFFICIAL = fg.ForgettingConfig()


def _floor_linspace(stop: int, num: int) -> list[int]:
  """floor(linspace) in plain Python float64 arithmetic, numpy's formula j * (stop / (num - 1))."""
  if num == 1:
    return [0]
  step = stop / (num - 1)
  return [int(math.floor(j * step)) for j in range(num - 1)] + [stop]


def test_layout_matches_official_fixture(fixture_path):
  t = load_file(fixture_path("hourllava_official_e2e_small.safetensors"))
  layout = fg.video_layout([4], OFFICIAL)
  np.testing.assert_array_equal(layout.source_frame[0], t["debug.frame_pad_indices"])
  np.testing.assert_array_equal(layout.retained_frames[0], t["debug.temporal_indices"])
  np.testing.assert_array_equal(layout.memory_frames[0], np.arange(128))


def test_layout_formula_over_all_lengths():
  # T'=149 is one where exact integer division would differ from the official float64 rule.
  for t in list(range(1, 300)) + [3600, 7200]:
    lay = fg.video_layout([t], OFFICIAL)
    padded = max(t, 128)
    n = min(512, padded // 4)
    assert lay.retained_frames[0].tolist() == _floor_linspace(padded - 1, n), t
    assert lay.num_retained[0] == n
    src = lay.source_frame[0]
    assert src.tolist() == (_floor_linspace(t - 1, 128) if t < 128 else list(range(t)))
  assert fg.video_layout([149], OFFICIAL).retained_frames[0][27] == 110   # float64 floor; 27*148//36 = 111


def test_layout_batch_padding_and_sizes():
  lay = fg.video_layout([0, 5, 300], OFFICIAL, padded_frames=400, memory_frames=400, retained_frames=80)
  assert lay.source_frame.shape == (3, 400) and lay.retained_frames.shape == (3, 80)
  assert (lay.source_frame[0] == -1).all() and lay.num_retained[0] == 0     # text-only sample
  assert lay.num_retained.tolist() == [0, 32, 75]
  assert (lay.retained_frames[2, 75:] == -1).all()
  with pytest.raises(ValueError, match="retained_frames=10"):
    fg.video_layout([300], OFFICIAL, retained_frames=10)


@pytest.mark.parametrize("scale,frames", [(1.0, 200), (0.5, 100), (0.25, 50)])
def test_memory_scale(scale, frames):
  cfg = fg.ForgettingConfig(memory_scale=scale)
  lay = fg.video_layout([200], cfg)
  mem = lay.memory_frames[0]
  assert len(mem) == frames and mem[0] == 0 and mem[-1] == 199 and (np.diff(mem) > 0).all()


def test_memory_decayed_only_is_the_retained_frames():
  lay = fg.video_layout([200], fg.ForgettingConfig(memory_scale=0.0))
  np.testing.assert_array_equal(lay.memory_frames, lay.retained_frames)


def test_spatial_random_deterministic_sorted_and_uniform():
  key = jax.random.key(7)
  a = fg.spatial_indices(key, OFFICIAL, (4, 512), grid=8)
  b = fg.spatial_indices(key, OFFICIAL, (4, 512), grid=8)
  c = fg.spatial_indices(jax.random.key(8), OFFICIAL, (4, 512), grid=8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  a = np.asarray(a)
  assert a.shape == (4, 512, 16)
  assert (np.diff(a, axis=-1) > 0).all() and a.min() >= 0 and a.max() < 64   # raster order, no repeats
  assert len({tuple(r) for r in a.reshape(-1, 16)}) > 2000                 # frames draw independently
  freq = np.bincount(a.ravel(), minlength=64) / a.reshape(-1, 16).shape[0]
  sigma = math.sqrt(0.25 * 0.75 / 2048)
  assert np.abs(freq - 0.25).max() < 5 * sigma                              # each token kept w.p. 1/4
  assert fg.spatial_indices(key, OFFICIAL, (1, 1), grid=27).shape[-1] == 183   # image: ceil(729/4)


def test_spatial_uniform_is_the_stride_two_grid(fixture_path):
  t = load_file(fixture_path("hourllava_official_e2e_small.safetensors"))
  idx = fg.spatial_indices(None, fg.ForgettingConfig(spatial="uniform"), (2, 3), grid=8)
  assert idx.shape == (2, 3, 16)
  np.testing.assert_array_equal(idx[0, 0], t["debug.spatial_indices"])


def test_temporal_random_picks_count_valid_frames():
  valid = jnp.arange(40)[None] < jnp.array([[40], [20]])
  idx = np.asarray(fg.temporal_random(jax.random.key(0), valid, jnp.array([10, 5]), 10))
  assert (np.diff(idx[0]) > 0).all() and idx[0].max() < 40
  assert (idx[1, :5] < 20).all() and (np.diff(idx[1, :5]) > 0).all() and (idx[1, 5:] == -1).all()
  again = fg.temporal_random(jax.random.key(0), valid, jnp.array([10, 5]), 10)
  np.testing.assert_array_equal(idx, again)


def test_temporal_keyframe_keeps_the_changes():
  """Frames in long static runs are redundant; the isolated different frames are kept."""
  rng = np.random.default_rng(0)
  base = rng.normal(size=(1, 1, 32))
  emb = np.repeat(base, 48, axis=1) + 0.01 * rng.normal(size=(1, 48, 32))
  special = [5, 20, 37]
  emb[0, special] = rng.normal(size=(3, 32))
  idx = fg.temporal_keyframe(jnp.asarray(emb), jnp.ones((1, 48), bool), jnp.array([3]), 3)
  assert np.asarray(idx)[0].tolist() == special


def test_temporal_question_keeps_matching_frames():
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(1, 30, 16))
  question = rng.normal(size=(1, 16))
  emb[0, [3, 17]] = 2.0 * question
  idx = fg.temporal_question(jnp.asarray(emb), jnp.asarray(question), jnp.ones((1, 30), bool),
                             jnp.array([2]), 4)
  assert np.asarray(idx)[0].tolist() == [3, 17, -1, -1]


def test_bad_config_names_the_field():
  with pytest.raises(ValueError, match="forgetting.temporal='nearest'"):
    fg.ForgettingConfig(temporal="nearest")
  with pytest.raises(ValueError, match="memory_scale"):
    fg.ForgettingConfig(memory_scale=2.0)
