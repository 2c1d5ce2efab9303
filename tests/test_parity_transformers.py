"""hourjax against transformers (torch, float32) on random weights: ‖out−ref‖/‖ref‖ < 1e-5 per
module, < 1e-4 for whole models. Runs through the user-facing verify tool."""
from conftest import needs_torch

needs_torch()      # these tests compare against torch / transformers models: skip without it

import numpy as np
import pytest
import torch
import transformers

import hf_models
from tools.convert_torch.verify import verify_hf_dir
from hourjax.numerics import rel_err
from conftest import jit_apply


@pytest.mark.parametrize("use_head", [True, False])
def test_siglip(tmp_path, use_head):
  hf_models.siglip(tmp_path, use_head=use_head)
  errors = verify_hf_dir(str(tmp_path))
  assert ("pooler_output" in errors) == use_head
  assert max(errors.values()) < 1e-5, errors


def test_siglip_any_layer(tmp_path):
  from hourjax.convert import import_torch
  from hourjax.models import build
  ref = hf_models.siglip(tmp_path, layers=3)
  conv = import_torch(str(tmp_path))
  px = np.random.default_rng(1).uniform(-1, 1, (2, 3, 56, 56)).astype(np.float32)
  with torch.no_grad():
    hs = ref(torch.from_numpy(px), output_hidden_states=True).hidden_states
  model = build.build("siglip", conv.config)
  for layer in (0, 1, 2, -2, -1):
    out = jit_apply(model, conv.params, px.transpose(0, 2, 3, 1), feature_layer=layer)
    assert rel_err(out, hs[layer].numpy()) < 1e-5, layer


@pytest.mark.parametrize("tie,kv_heads,theta", [(False, 2, 1e6), (True, 2, 1e6), (False, 4, 1e9),
                                                (True, 8, 1e9)])
def test_qwen2(tmp_path, tie, kv_heads, theta):
  hf_models.qwen2(tmp_path, tie=tie, kv_heads=kv_heads, theta=theta)
  errors = verify_hf_dir(str(tmp_path))
  assert errors["logits"] < 1e-5, errors


def test_qwen2_padding_and_positions(tmp_path):
  from hourjax.convert import import_torch
  from hourjax.models import build
  ref = hf_models.qwen2(tmp_path, theta=1e9)
  conv = import_torch(str(tmp_path))
  rng = np.random.default_rng(2)
  ids = rng.integers(0, 96, (2, 20))
  mask = np.ones_like(ids)
  mask[1, 13:] = 0                                   # right padding
  positions = np.broadcast_to(np.arange(20) + 1000, (2, 20))   # explicit, far from zero
  with torch.no_grad():
    r = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions.copy())).logits.numpy()
  out, _ = jit_apply(build.build("qwen2", conv.config), conv.params, ids, positions=positions,
                                                   attention_mask=mask)
  valid = mask.astype(bool)
  assert rel_err(np.asarray(out)[valid], r[valid]) < 1e-5


def test_llava_onevision_vision_projector(tmp_path):
  hf_models.llava_onevision(tmp_path)
  errors = verify_hf_dir(str(tmp_path))
  assert errors["vision+projector"] < 1e-5, errors
  assert errors["text logits"] < 1e-5, errors


def test_siglip_text_tower_and_image_text_similarity(tmp_path):
  """SigLIP's text tower from a SiglipModel checkpoint (kind siglip_text), and the vision half
  of the same file: transformers' text and image embeddings and its image-text logits."""
  from hourjax.convert import import_torch
  from hourjax.models import build
  ref = hf_models.siglip_pair(tmp_path)
  errors = verify_hf_dir(str(tmp_path), kind="siglip_text")
  assert max(errors.values()) < 1e-5, errors
  text, vision = import_torch(str(tmp_path), "siglip_text"), import_torch(str(tmp_path))
  rng = np.random.default_rng(3)
  ids = rng.integers(0, 120, (3, 16))
  px = rng.uniform(-1, 1, (2, 56, 56, 3)).astype(np.float32)
  t = jit_apply(build.build("siglip_text", text.config), text.params, ids)["pooler_output"]
  v = jit_apply(build.build("siglip", vision.config), vision.params, px)["pooler_output"]
  t, v = (np.asarray(x) / np.linalg.norm(x, axis=-1, keepdims=True) for x in (t, v))
  with torch.no_grad():
    r = ref(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(px.transpose(0, 3, 1, 2)))
  logits = t @ v.T * ref.logit_scale.exp().item() + ref.logit_bias.item()
  assert rel_err(logits, r.logits_per_text.numpy()) < 1e-5
  from hourjax.convert import export_torch          # and back: transformers loads it, bit for bit
  export_torch(str(tmp_path / "text"), "siglip_text", text.config, text.params)
  back = transformers.SiglipTextModel.from_pretrained(str(tmp_path / "text"), dtype=torch.float32).state_dict()
  for k, value in ref.text_model.state_dict().items():
    assert torch.equal(value, back[k]), k
