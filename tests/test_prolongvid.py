"""ProLongVid's model against transformers' LLaVA-OneVision (torch, float32, random weights) where
they share behaviour (anyres images, multi-image, videos pooled to ceil(side/2) with one newline),
and against a torch transcription of LLaVA-NeXT's `get_2dPool` + `add_token_per_grid` where
ProLongVid differs (12x12 after the projector, a newline per row). ‖out−ref‖/‖ref‖ < 1e-5."""
import functools
import math

import jax
import numpy as np
import pytest
import torch

import hf_models
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.convert import api
from hourjax.models import anyres, build
from hourjax.models.forgetting import video_layout
from hourjax.numerics import rel_err

SIDE, CROP = 4, 56          # the tiny tower: 56px crops of 4 x 4 patches
PINPOINTS = [[CROP * i, CROP * j] for i in range(1, 7) for j in range(1, 7)]


@functools.lru_cache(maxsize=1)
def pair(tmp="/tmp/hourjax-test-prolongvid-ov"):
  """(transformers model, hourjax ProLongVid converted from it), built once for the module."""
  ref = hf_models.llava_onevision(tmp, pinpoints=PINPOINTS)
  conv = api.import_torch(tmp, model="prolongvid")
  return ref.eval(), conv


@functools.lru_cache(maxsize=None)
def _apply(kind_modality: str):
  _, conv = pair()
  model = build.build("prolongvid", conv.config)
  return jax.jit(lambda p, ids, mask, layout, px: model.apply({"params": p}, ids, mask, layout=layout, pixels=px,
                                                              modality=kind_modality)["logits"])


def _text(rng, n):
  return rng.integers(0, 90, n)


def _hf_logits(ids, **kw):
  ref, _ = pair()
  with torch.no_grad():
    return ref(input_ids=torch.from_numpy(np.asarray(ids)[None]), **kw).logits[0].numpy()


def _ours(modality, ids_rows, layout, pixels):
  _, conv = pair()
  width = max(map(len, ids_rows))
  ids = np.zeros((len(ids_rows), width), np.int32)
  mask = np.zeros_like(ids)
  for i, row in enumerate(ids_rows):
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return np.asarray(_apply(modality)(conv.params, ids, mask, layout, pixels))


def test_config_from_transformers_and_prolongvid_rules():
  _, conv = pair()
  assert conv.kind == "prolongvid" and conv.config.pool_size == math.ceil(SIDE / 2)
  assert conv.config.newline == "video" and conv.config.max_crops == 9 and "memaug" not in conv.params


def test_anyres_images_batched_match_transformers():
  """Two samples of different crop grids in one padded batch: a tall image whose map is downsized
  (anyres_max_9), a wide one that is only unpadded; each against transformers alone."""
  rng = np.random.default_rng(0)
  sizes = [(330, 250), (70, 150)]
  grids = [anyres.select_grid(h, w, CROP) for h, w in sizes]
  layout = anyres.image_layout([[(h, w, g)] for (h, w), g in zip(sizes, grids)], SIDE)
  counts = layout.valid.sum(1)
  # both branches of anyres_max_9: the first (6x5 crops, 24x18 unpadded) is downsized to 13x10,
  # the second (2x3 crops, 8x12 unpadded to 6x12) is not; + base crop and a newline per row
  assert grids == [(6, 5), (2, 3)]
  assert list(counts) == [SIDE * SIDE + 13 * 11, SIDE * SIDE + 6 * 13]
  k = max(anyres.crop_count(g) for g in grids)
  pixels = rng.integers(0, 256, (2, k, CROP, CROP, 3), dtype=np.uint8)
  prompts = [np.concatenate([_text(rng, 3), [IMAGE_TOKEN_INDEX], _text(rng, 4 + i)]) for i in range(2)]
  ours = _ours("image", prompts, layout, pixels)
  for i, ((h, w), g) in enumerate(zip(sizes, grids)):
    n = anyres.crop_count(g)
    px = torch.from_numpy(pixels[i, :n].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)[None]
    ids = np.concatenate([prompts[i][:3], np.full(counts[i], 95), prompts[i][4:]])
    ref = _hf_logits(ids, pixel_values=px, image_sizes=torch.tensor([[h, w]]))
    assert rel_err(ours[i, :len(ids)], ref) < 1e-5, i


def test_multi_image_sample_matches_transformers():
  """Two images in one sample, each one crop of 729 (here 16) tokens plus a newline, placed at
  its own <image> placeholder."""
  rng = np.random.default_rng(1)
  layout = anyres.image_layout([[(80, 60, None), (50, 90, None)]], SIDE)
  pixels = rng.integers(0, 256, (1, 2, CROP, CROP, 3), dtype=np.uint8)
  prompt = np.concatenate([_text(rng, 2), [IMAGE_TOKEN_INDEX], _text(rng, 3), [IMAGE_TOKEN_INDEX], _text(rng, 2)])
  ours = _ours("image", [prompt], layout, pixels)
  n = SIDE * SIDE + 1
  ids = np.concatenate([prompt[:2], np.full(n, 95), prompt[3:6], np.full(n, 95), prompt[7:]])
  px = torch.from_numpy(pixels[0].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)[:, None]
  ref = _hf_logits(ids, pixel_values=px, image_sizes=torch.tensor([[80, 60], [50, 90]]),
                   batch_num_images=torch.tensor([2]))
  assert rel_err(ours[0, :len(ids)], ref) < 1e-5


def test_video_matches_transformers():
  """A 3-frame video batched with a 2-frame one (padded frame masked): pooled to ceil(4/2) after
  the projector, one newline after the video."""
  rng = np.random.default_rng(2)
  _, conv = pair()
  frames = [3, 2]
  layout = video_layout(frames, conv.config.forgetting)
  pixels = rng.integers(0, 256, (2, 3, CROP, CROP, 3), dtype=np.uint8)
  prompts = [np.concatenate([_text(rng, 4), [IMAGE_TOKEN_INDEX], _text(rng, 3 + i)]) for i in range(2)]
  ours = _ours("video", prompts, layout, pixels)
  for i, t in enumerate(frames):
    n = t * conv.config.pool_size ** 2 + 1
    ids = np.concatenate([prompts[i][:4], np.full(n, 94), prompts[i][5:]])
    px = torch.from_numpy(pixels[i, :t].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)[None]
    ref = _hf_logits(ids, pixel_values_videos=px)
    assert rel_err(ours[i, :len(ids)], ref) < 1e-5, i


def _official_grid_tokens(projected: torch.Tensor, newline: torch.Tensor, side: int, size: int) -> torch.Tensor:
  """LLaVA-NeXT's video path as ProLongVid configures it (spec §7), transcribed: get_2dPool in
  bilinear mode to [size, size] (mm_fixed_patch_length), then add_token_per_grid."""
  frames, _, dim = projected.shape
  x = projected.view(frames, side, side, dim).permute(0, 3, 1, 2)
  x = torch.nn.functional.interpolate(x, size=[size, size], mode="bilinear")
  x = x.permute(0, 2, 3, 1).reshape(frames, size * size, dim)
  x = x.view(frames, 1, size, size, dim).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
  x = torch.cat((x, newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
  return x.flatten(1, 2).transpose(0, 1)


def test_prolongvid_grid_rule_matches_official_transcription():
  """pool 3 (as 27 -> 12 at full size) and a newline per row; the reference builds the LLM input
  from transformers' own tower and projector, then runs transformers' decoder on it."""
  import dataclasses
  ref, conv = pair()
  cfg = dataclasses.replace(conv.config, pool_size=3, newline="grid")
  assert cfg.tokens_per_frame() == 12
  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, (1, 2, CROP, CROP, 3), dtype=np.uint8)
  prompt = np.concatenate([_text(rng, 3), [IMAGE_TOKEN_INDEX], _text(rng, 5)])
  model = build.build("prolongvid", cfg)
  ours = np.asarray(jax.jit(lambda p: model.apply({"params": p}, prompt[None], np.ones((1, len(prompt))),
                                                  layout=video_layout([2], cfg.forgetting), pixels=pixels)["logits"])(conv.params))
  with torch.no_grad():
    px = torch.from_numpy(pixels[0].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    feats = ref.model.vision_tower(px, output_hidden_states=True).hidden_states[-1]
    visual = _official_grid_tokens(ref.model.multi_modal_projector(feats), ref.model.image_newline, SIDE, 3)
    embed = ref.model.get_input_embeddings()
    text = lambda ids: embed(torch.from_numpy(ids))
    inputs = torch.cat([text(prompt[:3]), visual, text(prompt[4:])])[None]
    want = ref(inputs_embeds=inputs).logits[0].numpy()
  assert visual.shape[0] == 2 * 12 and ours.shape[1] == want.shape[0]
  assert rel_err(ours[0], want) < 1e-5


@pytest.mark.parametrize("hw", [(330, 250), (70, 150), (1000, 60), (60, 1000), (384, 384), (20, 700)])
def test_anyres_grid_and_unpad_follow_transformers(hw):
  """The host rules against transformers' own functions (no model): best grid and unpadded size."""
  from transformers.models.llava_onevision import modeling_llava_onevision as m
  h, w = hw
  rows, cols = m.get_anyres_image_grid_shape((h, w), PINPOINTS, CROP)
  assert anyres.select_grid(h, w, CROP) == (rows, cols)
  top, bottom, left, right = anyres.unpadded(h, w, rows * SIDE, cols * SIDE)
  want = m.unpad_image(torch.zeros(1, rows * SIDE, cols * SIDE), torch.tensor([h, w])).shape[1:]
  assert (bottom - top, right - left) == tuple(want)


def test_prolongvid_checkpoint_layout_round_trip(fixture_path, tmp_path):
  """A `prolongvid/*` checkpoint: the LLaVA-NeXT layout whose config records ProLongVid's pooling.
  It imports as ProLongVid's model (no MemAug initialised) with the recorded rule, exports back to
  exactly its keys, tensors and config, and refuses layouts that cannot hold it."""
  import json
  from test_convert import _fixture_state_dict, _tensors, llava_config
  from hourjax.convert.io import write_safetensors
  sd, official = _fixture_state_dict(fixture_path)
  sd = {k: v for k, v in sd.items() if not k.startswith("model.vision_resampler.")}
  cfg = {**llava_config(official, "llava_qwen"), "mm_fixed_patch_length": 3}
  write_safetensors(str(tmp_path / "model.safetensors"), sd)
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  conv = api.import_torch(str(tmp_path))
  assert conv.kind == "prolongvid" and conv.initialised == [] and "memaug" not in conv.params
  assert (conv.config.pool_size, conv.config.newline, conv.config.max_crops) == (3, "grid", 9)
  as_hour_llava = api.import_torch(str(tmp_path), model="hour_llava", key=jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, conv.params,
               {k: v for k, v in as_hour_llava.params.items() if k != "memaug"})
  api.export_torch(str(tmp_path / "out"), "llava", conv.config, conv.params, conv.source_config)
  out = _tensors(tmp_path / "out")
  assert set(out) == set(sd) - {"lm_head.weight"}       # tied: the head is the embedding
  for k in out:
    np.testing.assert_array_equal(out[k], sd[k], err_msg=k)
  back = json.loads((tmp_path / "out" / "config.json").read_text())
  assert {k: back[k] for k in cfg if k != "vision_config"} == {k: cfg[k] for k in cfg if k != "vision_config"}
  for kind in ("hour_llava", "llava_onevision"):
    with pytest.raises(ValueError, match="export it as kind 'llava'"):
      api.export_torch(str(tmp_path / kind), kind, conv.config, conv.params)
