"""Hour-LLaVA's image path (spec §1.10) against a torch transcription of the official
`prepare_inputs_labels_for_multimodal` image branches (`multi_image_resize`, `q_vision_sampling`,
`add_grid_image_newline`, the multi-image ids and the MemAug query loop): the memory, the decayed
queries and MemAug's query with its position ids, for anyres images (unpadded and downsized maps),
multi-image samples and a plain image, in one padded batch, in uniform mode and with the random
draw's picks read back (and counted: ceil(n / 4) per crop set). MemAug itself and everything after
it are pinned by the official fixtures (test_official_fixtures)."""
from conftest import needs_torch

needs_torch()      # these tests compare against torch / transformers models: skip without it

import dataclasses
import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import jit_apply
from hourjax.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from hourjax.data import batching
from hourjax.data.anyres import token_width
from hourjax.models import anyres, build
from hourjax.models.forgetting import ForgettingConfig
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.memaug import MemAugConfig
from hourjax.models.qwen2 import Qwen2Config
from hourjax.models.siglip import SiglipConfig
from hourjax.numerics import rel_err

SIDE, CROP, G = 8, 112, 64
LLM = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                  num_kv_heads=2, tie_word_embeddings=True)
CFG = HourLlavaConfig(
    vision=SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, image_size=CROP,
                        patch_size=14),
    llm=LLM, memaug=MemAugConfig(hidden_size=32, num_heads=4, num_kv_heads=2, depth=1, init="fan_in"),
    forgetting=ForgettingConfig(spatial="uniform"))
# per sample: its images as (height, width, grid or None): a 2x3-crop map (unpadded to 14 x 24), a
# 4x3 one (unpadded, then downsized by anyres_max_9 to 26 x 21), two plain crops, one plain image
SAMPLES = [[(h, w, anyres.select_grid(h, w, CROP))] for h, w in ((200, 330), (420, 330))]
SAMPLES += [[(80, 60, None), (50, 90, None)], [(CROP, CROP, None)]]


# -- the official rules, transcribed in torch --------------------------------------------------------
def _unpad(feature, width, height):
  """unpad_image: `feature` [C, H, W]; original size (width, height); the covered side truncated."""
  h, w = feature.shape[1:]
  if width / height > w / h:
    pad = (h - int(height * (w / width))) // 2
    return feature[:, pad:h - pad]
  pad = (w - int(width * (h / height))) // 2
  return feature[:, :, pad:w - pad]


def _sample_grid(feature, ids, picks):
  """q_vision_sampling of one grid [h, w, C] / ids [h, w]: uniform [::2, ::2], or the given picks."""
  if picks is None:
    return feature[::2, ::2].reshape(-1, feature.shape[-1]), ids[::2, ::2].reshape(-1)
  picks = torch.as_tensor(np.sort(picks))
  return feature.reshape(-1, feature.shape[-1])[picks], ids.reshape(-1)[picks]


def _add_row_newlines(feature, ids, row_starts, newline, newline_id):
  """add_grid_image_newline: a newline after every row that kept a token, and one at the end."""
  parts, id_parts, start = [], [], 0
  for pos in row_starts.tolist():
    after = (ids >= pos).nonzero()[:, 0]
    if len(after) == 0 or after[0].item() == start:
      continue
    cut = after[0].item()
    parts += [feature[start:cut], newline[None]]
    id_parts += [ids[start:cut], torch.tensor([newline_id])]
    start = cut
  parts += [feature[start:], newline[None]]
  id_parts += [ids[start:], torch.tensor([newline_id])]
  return torch.cat(parts), torch.cat(id_parts)


def official_image(crops, newline, images, picks):
  """One sample's (memory, memory ids, [(queries, query ids) per image]) from its projected crops
  [K, g, C]; `picks` per crop set (base, map / each crop) or None (uniform)."""
  if len(images) == 1 and images[0][2] is not None:        # anyres: base crop + unpadded map
    (height, width, (rows, cols)), = images
    base = crops[0].reshape(SIDE, SIDE, -1)
    grid = crops[1:1 + rows * cols].reshape(rows, cols, SIDE, SIDE, -1)
    grid = grid.permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
    grid = _unpad(grid, width, height)
    h, w = grid.shape[1:]
    times = math.sqrt(h * w / (CFG.max_crops * G))
    if times > 1.1:
      grid = F.interpolate(grid[None], [int(h // times), int(w // times)], mode="bilinear")[0]
    grid = grid.permute(1, 2, 0)
    h, w = grid.shape[:2]
    grid_ids = torch.arange(h * w).reshape(h, w)
    base_ids = grid_ids[torch.linspace(0, h - 1, SIDE).round().long()][:, torch.linspace(0, w - 1, SIDE).round().long()]
    q_base, q_base_ids = _sample_grid(base, base_ids, picks[0])
    q_grid, q_grid_ids = _sample_grid(grid, grid_ids, picks[1])
    q_grid, q_grid_ids = _add_row_newlines(q_grid, q_grid_ids, grid_ids[1:, 0], newline, h * w)
    with_newline = torch.cat([grid, newline.expand(h, 1, -1)], 1)
    memory = torch.cat([base.reshape(G, -1), with_newline.reshape(-1, with_newline.shape[-1])])
    memory_ids = torch.cat([base_ids.reshape(-1), torch.cat([grid_ids, torch.full((h, 1), h * w)], 1).reshape(-1)])
    return memory, memory_ids, [(torch.cat([q_base, q_grid]), torch.cat([q_base_ids, q_grid_ids]))]
  k = len(images)                                          # plain crops: one per image
  ids = torch.arange(k * G).reshape(k, SIDE, SIDE)
  queries = []
  for i in range(k):
    q, q_ids = _sample_grid(crops[i].reshape(SIDE, SIDE, -1), ids[i], picks[i])
    queries.append((torch.cat([q, newline[None]]), torch.cat([q_ids, torch.tensor([k * G])])))
  memory = torch.cat([torch.cat([crops[i], newline[None]]) for i in range(k)])
  memory_ids = torch.cat([torch.cat([ids[i].reshape(-1), torch.tensor([k * G])]) for i in range(k)])
  return memory, memory_ids, queries


def official_query(input_ids, labels, embed, queries):
  """The MemAug query loop: text kept where the label is ignore_index, image i's query ids offset
  by the largest id so far + 1, each text segment continuing after it."""
  labels = torch.full_like(input_ids, IGNORE_INDEX) if labels is None else labels
  cuts = [-1] + (input_ids == IMAGE_TOKEN_INDEX).nonzero()[:, 0].tolist() + [len(input_ids)]
  feats, ids, largest = [], [], -1
  for i in range(len(cuts) - 1):
    seg = slice(cuts[i] + 1, cuts[i + 1])
    keep = labels[seg] == IGNORE_INDEX
    text = embed[input_ids[seg][keep]]
    feats.append(text)
    ids.append(torch.arange(len(text)) + largest + 1)
    largest = int(torch.cat(ids).max())
    if i < len(queries):
      q, q_ids = queries[i]
      feats.append(q)
      ids.append(q_ids + largest + 1)
      largest = int(torch.cat(ids).max())
  return torch.cat(feats), torch.cat(ids)


# -- hourjax ---------------------------------------------------------------------------------------
def _batch(rng):
  rows = []
  for images in SAMPLES:
    ids, labels = [], []
    for _ in images:     # a few prompt tokens, the placeholder, more text
      ids += list(rng.integers(1, LLM.vocab_size, 3)) + [IMAGE_TOKEN_INDEX]
      labels += [IGNORE_INDEX] * 4
    tail = list(rng.integers(1, LLM.vocab_size, 6))
    ids, labels = ids + tail, labels + [t if j % 2 else IGNORE_INDEX for j, t in enumerate(tail)]
    rows.append((np.array(ids), np.array(labels)))
  width = max(len(i) for i, _ in rows)
  ids = np.zeros((len(rows), width), np.int32)
  labels = np.full((len(rows), width), IGNORE_INDEX, np.int32)
  mask = np.zeros_like(ids)
  for i, (s_ids, s_labels) in enumerate(rows):
    ids[i, :len(s_ids)], labels[i, :len(s_ids)], mask[i, :len(s_ids)] = s_ids, s_labels, 1
  crops = max(sum(anyres.crop_count(g) for *_, g in images) for images in SAMPLES)
  edge = batching.crop_edge(crops)
  layout = anyres.image_layout(SAMPLES, SIDE, width=token_width(edge, SIDE))
  pixels = rng.uniform(-1, 1, (len(SAMPLES), edge, CROP, CROP, 3)).astype(np.float32)
  return ids, mask, labels, layout, pixels


def _picks(source, layout, b, images):
  """The random draw read back: per crop set, the kept tokens' indices within the set."""
  source = source[(source >= 0)]
  source = source[~layout.newline[b][source]]
  if images[0][2] is not None:               # the base's index, the map token's id (= its index)
    return [source[source < G], layout.ids[b][source[source >= G]]]
  return [layout.ids[b][source[layout.image[b][source] == i]] - i * G for i in range(len(images))]


@pytest.mark.parametrize("spatial", ["uniform", "random"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_image_memory_and_queries_match_the_official_transcription(spatial, with_labels):
  cfg = dataclasses.replace(CFG, forgetting=ForgettingConfig(spatial=spatial))
  model = build.build("hour_llava", cfg)
  params = build.init_params("hour_llava", cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  ids, mask, labels, layout, pixels = _batch(rng)
  out, inter = jit_apply(model, params, ids, mask, labels if with_labels else None, layout=layout, pixels=pixels,
                         modality="image", rng=jax.random.key(1), mutable="intermediates")
  it = {k: np.asarray(v[0]) for k, v in inter["intermediates"].items() if isinstance(v, tuple)}
  embed = torch.from_numpy(np.asarray(params["llm"]["embed"]["embedding"]))
  newline = torch.from_numpy(np.asarray(params["image_newline"]))
  for b, images in enumerate(SAMPLES):
    crops = torch.from_numpy(it["projected"][b])
    n_mem = int(layout.valid[b].sum())
    picks = [None] * len(images) * 2
    if spatial == "random":
      picks = _picks(it["decayed_query_source"][b], layout, b, images)
      sizes = [int(np.sum(layout.group[b] == s)) for s in range(len(picks))]
      assert [len(p) for p in picks] == [math.ceil(n / 4) for n in sizes]     # ceil(n / 4) of each set
    memory, memory_ids, queries = official_image(crops, newline, images, picks)
    assert rel_err(it["memory"][b][:n_mem], memory.numpy()) < 1e-6
    np.testing.assert_array_equal(it["memory_position_ids"][b][:n_mem], memory_ids.numpy())
    query, query_ids = official_query(torch.from_numpy(ids[b][mask[b] > 0]).long(),
                                      torch.from_numpy(labels[b][mask[b] > 0]).long() if with_labels else None,
                                      embed, queries)
    assert rel_err(it["memaug_query"][b][:len(query)], query.numpy()) < 1e-6
    np.testing.assert_array_equal(it["memaug_query_position_ids"][b][:len(query)], query_ids.numpy())
  assert np.isfinite(np.asarray(out["logits"])).all()


def test_nearest_rows_round_as_torch():
  for num in (4, 8, 27):
    for size in range(1, 200):
      want = torch.linspace(0, size - 1, steps=num).round().long().numpy()
      np.testing.assert_array_equal(anyres.nearest_rows(size, num), want, err_msg=f"size {size}, num {num}")


def test_query_width_bounds_every_draw_at_so400m_scale():
  """The static query buffer holds any sample's decayed queries: at most ceil(n / 4) of each crop
  set (uniform: its stride-2 grid) and every newline, for 300 random image sizes and multi-image
  samples up to the largest crop bucket."""
  rng = np.random.default_rng(0)
  samples = [[(int(h), int(w), anyres.select_grid(int(h), int(w), 384))]
             for h, w in rng.integers(20, 4000, (300, 2))]
  samples += [[(384, 384, None)] * k for k in range(1, batching.CROP_EDGES[-1] + 1)]
  for images in samples:
    t = anyres.sample_tokens(images, 27)
    sets = [np.flatnonzero(t["group"] == s) for s in range(t["group"].max() + 1)]
    most = sum(max(math.ceil(len(s) / 4), int(t["stride"][s].sum())) for s in sets) + int(t["newline"].sum())
    crops = sum(anyres.crop_count(g) for *_, g in images)
    assert most <= anyres.query_width(batching.crop_edge(crops), 27), images
