"""ProLongVid's model against transformers' LLaVA-OneVision (torch, float32, random weights) where
they share behaviour (anyres images, multi-image, videos pooled to ceil(side/2) with one newline),
and against a torch transcription of LLaVA-NeXT's `get_2dPool` + `add_token_per_grid` where
ProLongVid differs (12x12 after the projector, a newline per row). ‖out−ref‖/‖ref‖ < 1e-5."""
from conftest import needs_torch

needs_torch()      # these tests compare against torch / transformers models: skip without it

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
  assert conv.config.unpad == "transformers"


def test_anyres_images_batched_match_transformers():
  """Two samples of different crop grids in one padded batch: a tall image whose map is downsized
  (anyres_max_9), a wide one that is only unpadded; each against transformers alone."""
  rng = np.random.default_rng(0)
  sizes = [(330, 250), (70, 150)]
  grids = [anyres.select_grid(h, w, CROP) for h, w in sizes]
  layout = anyres.image_layout([[(h, w, g)] for (h, w), g in zip(sizes, grids)], SIDE, rounding="transformers")
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
  layout = video_layout([2], cfg.forgetting)
  ours = np.asarray(jax.jit(lambda p: model.apply({"params": p}, prompt[None], np.ones((1, len(prompt))),
                                                  layout=layout, pixels=pixels)["logits"])(conv.params))
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
  top, bottom, left, right = anyres.unpadded(h, w, rows * SIDE, cols * SIDE, "transformers")
  want = m.unpad_image(torch.zeros(1, rows * SIDE, cols * SIDE), torch.tensor([h, w])).shape[1:]
  assert (bottom - top, right - left) == tuple(want)


def test_unpad_rounding_official_and_transformers_differ_where_the_codes_do():
  """The official LLaVA-NeXT / ProLongVid / Hour-LLaVA code truncates the covered side
  (`int(h * scale)`); transformers rounds to 7 digits first. Where a product lands a hair below
  an integer they differ by a row, and each rule matches its code there."""
  from transformers.models.llava_onevision import modeling_llava_onevision as m
  found = [(h, w) for h in range(1, 300) for w in range(1, 300)
           if anyres.unpadded(h, w, 27, 54) != anyres.unpadded(h, w, 27, 54, "transformers")]
  assert found, "no size where the rules differ"
  h, w = found[0]
  shape = lambda box: (box[1] - box[0], box[3] - box[2])
  official, ours = anyres.unpadded(h, w, 27, 54), anyres.unpadded(h, w, 27, 54, "transformers")
  want = tuple(m.unpad_image(torch.zeros(1, 27, 54), torch.tensor([h, w])).shape[1:])
  assert shape(ours) == want and shape(official) != want
  with pytest.raises(ValueError, match="rounding="):
    anyres.unpadded(h, w, 27, 54, "nearest")


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
  assert conv.config.unpad == "official"
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


def test_recipe_runs_in_the_papers_order_on_tiny(tmp_path):
  """configs/prolongvid.py:tiny through launch.recipe and the real loop: context extension, the
  three image stages (anyres crops, multi-image samples), the three progressive video stages,
  each from the previous one's parameters with its own groups frozen; a re-run skips them all."""
  import json
  import os
  from configs import prolongvid
  from hourjax.convert.io import load_params, read_meta
  from hourjax.synthetic.images import write_images
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  from hourjax.synthetic.videos import write_dataset
  from launch import recipe
  root = tmp_path / "data"
  write_dataset(str(root), num_videos=6, seconds=(12, 100), fps=1, size=48, seed=27)
  durations = [json.loads(line)["duration"] for line in open(root / "annotations.jsonl")]
  assert min(durations) < 30 and any(30 <= d < 75 for d in durations) and max(durations) >= 75  # every stage has data
  write_images(str(root), 8, sides=(30, 300), seed=1)
  docs = [f"document {i} " + " ".join(["the cat sat on the mat"] * (i + 2)) for i in range(12)]
  with open(root / "docs.jsonl", "w") as f:
    f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
  tok = save_tiny_tokenizer(str(root / "tokenizer"), docs)
  config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "prolongvid.py") + ":tiny"
  args = ["--config", config, "--workdir", str(tmp_path / "run"), f"data.root={root}", f"data.read.tokenizer={tok}",
          "data.batch_size=2", "train.steps=2", "train.checkpoint_every=2", "mesh.fsdp=2", "mesh.sequence=4",
          f"context_extension:data.documents=('{root / 'docs.jsonl'}',)", f"context_extension:data.tokenizer={tok}",
          "context_extension:data.seq_len=64"]
  assert recipe.main(args) == 0
  names = [str(s) for s in prolongvid.RECIPE]
  assert names == ["context_extension", "image_align", "image_knowledge", "image_sft", "1", "2", "3"]
  dirs = [tmp_path / "run" / f"{i}_{n}" / "params" for i, n in enumerate(names)]
  assert [read_meta(str(d))["kind"] for d in dirs] == ["qwen2"] + ["prolongvid"] * 6
  p = [load_params(str(d)) for d in dirs]
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(p[1]["llm"], p[0]) and not same(p[2]["llm"], p[1]["llm"])      # the extended decoder, then trained
  assert same(p[1]["vision"], p[0 + 1]["vision"]) and not same(p[2]["vision"], p[1]["vision"])  # align: projector only
  assert not same(p[1]["projector"], p[2]["projector"])
  for prev, video in zip(p[3:6], p[4:7]):        # video stages: SigLIP frozen, the rest trained
    assert same(video["vision"], prev["vision"]) and not same(video["llm"], prev["llm"])
  for d in dirs[1:]:      # every image (anyres, multi-image) and video sample was read
    data = json.loads((d.parent / "summary.json").read_text())["data"]
    assert data["skipped"] == 0 and sum(v for k, v in data.items() if k.startswith("samples_")) == 4
  metrics = [json.loads(line) for line in open(dirs[-1].parent / "metrics.jsonl")]
  assert metrics and all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
  # the LLM's visual context grows with the stages as the paper's (1/8 of the frames on the tiny preset)
  assert [prolongvid.visual_tokens(f"tiny,stage={s}") for s in (1, 2, 3)] == [4 * 20, 16 * 20, 24 * 20]
  assert recipe.main(args) == 0        # everything finished: nothing runs again
  assert same(load_params(str(dirs[-1])), p[-1])


@pytest.mark.parametrize("hw", [(130, 70), (33, 200), (56, 56), (300, 250)])
def test_anyres_crops_equal_transformers_processor(hw):
  """data.anyres against transformers' own LLaVA-OneVision image processor (PIL backend): the same
  grid and every crop's pixels identical (base first, then the grid row by row)."""
  import transformers
  from PIL import Image
  from hourjax.data import anyres as data_anyres
  proc = transformers.LlavaOnevisionImageProcessorPil(size={"height": CROP, "width": CROP},
                                                      image_grid_pinpoints=PINPOINTS, image_mean=[0.5] * 3,
                                                      image_std=[0.5] * 3)
  image = Image.fromarray(np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), dtype=np.uint8))
  want = proc(images=[image], return_tensors="np")["pixel_values"][0]
  crops, images = data_anyres.crops([image], CROP)
  assert tuple(images[0]) == (*hw, *anyres.select_grid(*hw, CROP)) and len(want) == len(crops)
  np.testing.assert_allclose(crops.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1, want, atol=1e-6)


def test_multi_image_crops_are_padded_squares():
  """Each image of a multi-image sample: squared with SigLIP's mean colour (the official
  expand2square), then one crop; the model's layout gives each its tokens and a newline."""
  from hourjax.data import anyres as data_anyres
  wide = np.zeros((20, 100, 3), np.uint8) + 255
  crops, images = data_anyres.crops([wide, wide[:, :50]], CROP)
  assert crops.shape == (2, CROP, CROP, 3) and images.tolist() == [[20, 100, 0, 0], [20, 50, 0, 0]]
  assert (crops[0, :5] == 127).all() and (crops[0, CROP // 2] == 255).all()      # grey above, image in the middle
  layout = anyres.image_layout([data_anyres.layout_images(images)], SIDE)
  assert layout.valid.sum() == 2 * (SIDE * SIDE + 1) and layout.newline.sum() == 2
  assert data_anyres.token_width(2, SIDE) >= layout.valid.sum()


def test_token_width_bounds_every_anyres_layout():
  """The static width of a crop bucket holds every image that lands in it (so400m sizes)."""
  from hourjax.data import anyres as data_anyres
  from hourjax.data.batching import crop_edge
  rng = np.random.default_rng(4)
  for h, w in rng.integers(1, 4000, (300, 2)):
    grid = anyres.select_grid(int(h), int(w), 384)
    n = anyres.crop_count(grid)
    edge = crop_edge(n)
    tokens = int(anyres.image_layout([[(int(h), int(w), grid)]], 27).valid.sum())
    assert tokens <= data_anyres.token_width(edge, 27), (h, w, grid, tokens)
