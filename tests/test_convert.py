"""Conversion both ways: exact round trips, transformers loading our exports, key-name variants,
bf16, streaming checks, and errors that name the tensor."""
import logging

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

import hf_models
from hourjax.convert import ConversionError, export_torch, import_torch, load_params, save_params
from hourjax.convert import api, layout
from hourjax.convert.io import SafetensorsFile, TorchCheckpoint, write_safetensors
from hourjax.models import build
from tools.convert_torch.verify import rel_err


def _tensors(path):
  ck = TorchCheckpoint(str(path))
  return {k: np.asarray(ck.get(k)) for k in ck.keys()}


@pytest.mark.parametrize("make,cls", [(hf_models.siglip, transformers.SiglipVisionModel),
                                      (hf_models.qwen2, transformers.Qwen2ForCausalLM),
                                      (hf_models.llava_onevision,
                                       transformers.LlavaOnevisionForConditionalGeneration)])
@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_hf_round_trip_exact(tmp_path, make, cls, scan):
  ref = make(tmp_path / "src")
  conv = import_torch(str(tmp_path / "src"), key=jax.random.key(0), scan_layers=scan)
  assert layout.is_scanned(conv.params) == scan == layout.config_scanned(conv.config)
  export_torch(str(tmp_path / "out"), conv.source_kind, conv.config, conv.params, conv.source_config)
  src, out = _tensors(tmp_path / "src"), _tensors(tmp_path / "out")
  if conv.source_kind == "siglip" or conv.source_kind == "qwen2":
    assert src.keys() == out.keys()
    for k in src:
      np.testing.assert_array_equal(src[k], out[k], err_msg=k)
  back = cls.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
  ref_sd, back_sd = ref.state_dict(), back.state_dict()
  skip = ("vision_tower.head",) if conv.source_kind == "llava_onevision" else ()  # unused MAP head
  for k, v in ref_sd.items():
    if not any(s in k for s in skip):
      assert torch.equal(v, back_sd[k]), k
  if conv.source_kind == "qwen2":
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
      assert torch.equal(ref(ids).logits, back(ids).logits)


def test_official_round_trip_exact(fixture_path, tmp_path):
  f = SafetensorsFile(fixture_path("hourllava_official_e2e_small.safetensors"))
  sd = {k[len("state_dict."):]: f.get(k) for k in f.keys() if k.startswith("state_dict.")}
  import json
  (tmp_path / "src").mkdir()
  write_safetensors(str(tmp_path / "src" / "model.safetensors"), sd)
  (tmp_path / "src" / "config.json").write_text(f.metadata["config"])
  conv = import_torch(str(tmp_path / "src"))
  assert conv.kind == "hour_llava" and conv.initialised == []
  export_torch(str(tmp_path / "out"), "hour_llava", conv.config, conv.params, conv.source_config)
  out = _tensors(tmp_path / "out")
  tied = {"lm_head.weight"}   # tied to embed_tokens: a checkpoint of a tied model may omit it
  assert set(sd) - tied == set(out)
  for k in out:
    np.testing.assert_array_equal(sd[k], out[k], err_msg=k)
  cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  assert api.config_from_hf("hour_llava", cfg) == conv.config


def test_llava_onevision_key_variants(tmp_path):
  """Hub on-disk names and transformers-5 in-memory names give the same params."""
  ref = hf_models.llava_onevision(tmp_path / "v5")
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cfg = (tmp_path / "v5" / "config.json").read_text()
  hub = {}
  for k, v in sd.items():
    k = (k.replace("model.vision_tower.", "vision_tower.vision_model.")
          .replace("model.language_model.", "language_model.model.")
          .replace("model.multi_modal_projector.", "multi_modal_projector.")
          .replace("model.image_newline", "image_newline")
          .replace("lm_head.weight", "language_model.lm_head.weight"))
    hub[k] = v
  params = {}
  for name, tensors in (("hub", hub), ("memory", sd)):
    (tmp_path / name).mkdir()
    write_safetensors(str(tmp_path / name / "model.safetensors"), tensors)
    (tmp_path / name / "config.json").write_text(cfg)
    params[name] = import_torch(str(tmp_path / name), key=jax.random.key(0)).params
  jax.tree.map(np.testing.assert_array_equal, params["hub"], params["memory"])


def test_llava_onevision_memaug_initialised_and_logged(tmp_path, caplog):
  hf_models.llava_onevision(tmp_path)
  with pytest.raises(ConversionError, match="MemAug"):
    import_torch(str(tmp_path))
  with caplog.at_level(logging.WARNING, "hourjax.convert"):
    conv = import_torch(str(tmp_path), key=jax.random.key(3))
  assert conv.initialised == ["memaug"] and "MemAug is not in the LLaVA-OneVision" in caplog.text
  k = conv.params["memaug"]["layers_0"]["cross_attn"]["q"]["kernel"]
  assert 0.015 < float(np.std(k)) < 0.025       # N(0, 0.02), as HF's init of the official stage 1
  assert not np.any(conv.params["memaug"]["layers_0"]["fc1"]["bias"])


def test_bf16_checkpoint_stays_exact(tmp_path):
  ref = hf_models.qwen2(tmp_path, dtype=torch.bfloat16)
  conv = import_torch(str(tmp_path))
  want = ref.to(torch.bfloat16).state_dict()["model.layers.0.mlp.up_proj.weight"].float().numpy()
  got = np.asarray(conv.params["layers_0"]["mlp"]["up"]["kernel"])
  assert got.dtype == ml_dtypes.bfloat16            # never upcast: RAM stays at the checkpoint size
  np.testing.assert_array_equal(got.T.astype(np.float32), want)
  f = SafetensorsFile(str(tmp_path / "model.safetensors"))
  assert f.get("model.norm.weight").dtype == ml_dtypes.bfloat16   # read without upcasting


def _broken(tmp_path, edit):
  hf_models.qwen2(tmp_path / "ok")
  sd = _tensors(tmp_path / "ok")
  edit(sd)
  (tmp_path / "bad").mkdir()
  write_safetensors(str(tmp_path / "bad" / "model.safetensors"), sd)
  (tmp_path / "bad" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
  return str(tmp_path / "bad")


def test_missing_tensor_is_named(tmp_path):
  path = _broken(tmp_path, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ConversionError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
    import_torch(path)


def test_unexpected_tensor_is_named(tmp_path):
  path = _broken(tmp_path, lambda sd: sd.update({"model.layers.9.extra.weight": np.ones(3, np.float32)}))
  with pytest.raises(ConversionError, match=r"unexpected tensors: model\.layers\.9\.extra\.weight"):
    import_torch(path)


def test_wrong_shape_is_named(tmp_path):
  def edit(sd):
    sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"][:8]
  with pytest.raises(ConversionError, match=r"wrong shape tensors: model\.layers\.0\.self_attn\.k_proj\.weight"):
    import_torch(_broken(tmp_path, edit))


def test_bin_shards_and_orbax_params(tmp_path):
  ref = hf_models.qwen2(tmp_path / "st")
  (tmp_path / "bin").mkdir()
  torch.save(ref.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  a, b = import_torch(str(tmp_path / "st")), import_torch(str(tmp_path / "bin"))
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  save_params(str(tmp_path / "ck"), a.params, "qwen2", a.config, a.source_config)
  restored = load_params(str(tmp_path / "ck"), build.abstract_params("qwen2", a.config))
  jax.tree.map(np.testing.assert_array_equal, a.params, restored)


def test_convert_cli(tmp_path):
  from tools.convert_torch import convert
  ref = hf_models.qwen2(tmp_path / "hf")
  assert convert.main(["to-jax", str(tmp_path / "hf"), str(tmp_path / "jax")]) == 0
  assert convert.main(["to-torch", str(tmp_path / "jax"), str(tmp_path / "back")]) == 0
  back = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "back"), dtype=torch.float32)
  ids = torch.arange(12)[None]
  with torch.no_grad():
    assert rel_err(back(ids).logits.numpy(), ref(ids).logits.numpy()) == 0.0
