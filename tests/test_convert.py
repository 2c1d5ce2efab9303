"""Conversion both ways: exact round trips, transformers loading our exports, key-name variants,
bf16, streaming checks, and errors that name the tensor."""
from conftest import needs_torch

needs_torch()      # these tests compare against torch / transformers models: skip without it

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
from hourjax.numerics import rel_err


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
  assert conv.initialised == ["memaug"] and "MemAug is not in the llava_onevision checkpoint" in caplog.text
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


# -- the checkpoint layouts users download ------------------------------------------------------

def _fixture_state_dict(fixture_path):
  f = SafetensorsFile(fixture_path("hourllava_official_e2e_small.safetensors"))
  import json
  return ({k[len("state_dict."):]: f.get(k) for k in f.keys() if k.startswith("state_dict.")},
          json.loads(f.metadata["config"]))


def llava_config(official: dict, model_type: str) -> dict:
  """config.json as lmms-lab's llava-onevision-qwen2-*-si / jylins' llava-onevision-qwen25-3b-si
  ship it (LlavaQwenForCausalLM, a Qwen2Config with LLaVA-NeXT's mm_* fields), at the fixture's
  tiny sizes; `vision_config` (absent from the real ones, whose tower is so400m) gives the tiny tower."""
  keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "rms_norm_eps", "rope_theta", "tie_word_embeddings", "vision_config")
  return {**{k: official[k] for k in keep if k in official}, "architectures": ["LlavaQwenForCausalLM"],
          "model_type": model_type,
          "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
          "image_aspect_ratio": "anyres_max_9", "image_crop_resolution": None,
          "image_grid_pinpoints": [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)],
          "image_split_resolution": None, "initializer_range": 0.02, "max_position_embeddings": 32768,
          "max_window_layers": 28, "mm_hidden_size": official["mm_hidden_size"], "mm_newline_position": "grid",
          "mm_patch_merge_type": "spatial_unpad", "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu",
          "mm_resampler_type": None, "mm_spatial_pool_mode": "bilinear",
          "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model", "mm_use_im_patch_token": False,
          "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
          "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_vision_tower_lr": 2e-06,
          "pos_skipping_range": 4096, "rope_scaling": None, "sliding_window": 131072,
          "tokenizer_model_max_length": 32768, "tokenizer_padding_side": "right", "torch_dtype": "bfloat16",
          "transformers_version": "4.40.0.dev0", "use_cache": True, "use_mm_proj": True,
          "use_pos_skipping": False, "use_sliding_window": False, "vision_tower_pretrained": None}


@pytest.mark.parametrize("model_type", ["llava", "llava_qwen"])
def test_llava_next_original_layout_round_trip(fixture_path, tmp_path, model_type, caplog):
  """The LLaVA-NeXT / OneVision original layout: the Hour-LLaVA keys without MemAug. It imports
  into the same weights the official Hour-LLaVA layout gives, MemAug initialised (and logged),
  and exports back to exactly its keys, tensors and config."""
  import json
  sd, official = _fixture_state_dict(fixture_path)
  llava_sd = {k: v for k, v in sd.items() if not k.startswith("model.vision_resampler.")}
  for name, tensors, cfg in (("llava", llava_sd, llava_config(official, model_type)), ("official", sd, official)):
    (tmp_path / name).mkdir()
    write_safetensors(str(tmp_path / name / "model.safetensors"), tensors)
    (tmp_path / name / "config.json").write_text(json.dumps(cfg))
  with caplog.at_level(logging.WARNING, "hourjax.convert"):
    conv = import_torch(str(tmp_path / "llava"), key=jax.random.key(0))
  assert conv.source_kind == "llava" and conv.kind == "hour_llava" and conv.initialised == ["memaug"]
  assert "MemAug is not in the llava checkpoint" in caplog.text
  ref = import_torch(str(tmp_path / "official"))
  ref.params.pop("memaug"), conv.params.pop("memaug")
  jax.tree.map(np.testing.assert_array_equal, conv.params, ref.params)
  assert conv.config.llm == ref.config.llm and conv.config.vision == ref.config.vision
  export_torch(str(tmp_path / "out"), "llava", conv.config, conv.params, conv.source_config)
  out = _tensors(tmp_path / "out")
  assert set(out) == set(llava_sd) - {"lm_head.weight"}       # tied: the head is the embedding
  for k in out:
    np.testing.assert_array_equal(out[k], llava_sd[k], err_msg=k)
  back = json.loads((tmp_path / "out" / "config.json").read_text())
  src = llava_config(official, model_type)
  assert {k: back[k] for k in src if k != "vision_config"} == {k: src[k] for k in src if k != "vision_config"}
  assert back["vision_config"].items() >= src["vision_config"].items()


def test_llava_config_without_vision_config_is_so400m():
  """Real LLaVA-OneVision configs name the tower instead of describing it."""
  from hourjax.convert.hour_llava import SO400M_KEPT
  cfg = llava_config({"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                      "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                      "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False,
                      "mm_hidden_size": 1152}, "llava")
  c = api.config_from_hf("llava", cfg)
  assert c.vision == SO400M_KEPT and c.llm.hidden_size == 3584 and c.memaug.depth == 4
  assert {k: v.shape for k, v in build.abstract_params("hour_llava", c)["vision"]["patch_embed"].items()} == {
      "kernel": (14, 14, 3, 1152), "bias": (1152,)}
  with pytest.raises(ValueError, match="mm_vision_tower"):
    api.config_from_hf("llava", {**cfg, "mm_vision_tower": "openai/clip-vit-large-patch14-336"})


def test_tied_head_in_the_file_must_equal_the_embeddings(fixture_path, tmp_path):
  """The fixture (tied) stores lm_head.weight: loaded as a copy; a different one is an error."""
  import json
  sd, official = _fixture_state_dict(fixture_path)
  assert official["tie_word_embeddings"] and "lm_head.weight" in sd
  for name, head in (("same", sd["model.embed_tokens.weight"]), ("other", sd["model.embed_tokens.weight"] + 1)):
    (tmp_path / name).mkdir()
    write_safetensors(str(tmp_path / name / "model.safetensors"), {**sd, "lm_head.weight": head})
    (tmp_path / name / "config.json").write_text(json.dumps(official))
  import_torch(str(tmp_path / "same"))
  with pytest.raises(ConversionError, match="lm_head.weight differs from the embeddings"):
    import_torch(str(tmp_path / "other"))


def test_training_output_directory_with_bin_shards_loads(tmp_path):
  """What a HF Trainer run leaves: sharded .bin weights with their index, training_args.bin beside."""
  import json
  ref = hf_models.qwen2(tmp_path / "st")
  sd = ref.state_dict()
  (tmp_path / "run").mkdir()
  names = sorted(sd)
  half = {k: sd[k] for k in names[:len(names) // 2]}, {k: sd[k] for k in names[len(names) // 2:]}
  weight_map = {}
  for i, part in enumerate(half):
    name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
    torch.save(part, tmp_path / "run" / name)
    weight_map.update({k: name for k in part})
  (tmp_path / "run" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  torch.save({"learning_rate": 2e-5, "output_dir": "/runs/x"}, tmp_path / "run" / "training_args.bin")
  (tmp_path / "run" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  jax.tree.map(np.testing.assert_array_equal, import_torch(str(tmp_path / "run")).params,
               import_torch(str(tmp_path / "st")).params)
  (tmp_path / "run" / "pytorch_model.bin.index.json").unlink()     # no index: the weight .bin files
  jax.tree.map(np.testing.assert_array_equal, import_torch(str(tmp_path / "run")).params,
               import_torch(str(tmp_path / "st")).params)


def test_transposed_tensor_of_the_right_size_is_an_error(tmp_path):
  def edit(sd):   # k_proj is [kv*d, H] = [16, 64]: its transpose has the same element count
    sd["model.layers.0.self_attn.k_proj.weight"] = np.ascontiguousarray(sd["model.layers.0.self_attn.k_proj.weight"].T)
  with pytest.raises(ConversionError, match=r"k_proj\.weight: got \(64, 16\), expected \(16, 64\)"):
    import_torch(_broken(tmp_path, edit))


def test_truncated_file_and_missing_config_are_named(tmp_path):
  hf_models.qwen2(tmp_path / "ok")
  (tmp_path / "cut").mkdir()
  data = (tmp_path / "ok" / "model.safetensors").read_bytes()
  (tmp_path / "cut" / "model.safetensors").write_bytes(data[:len(data) // 2])
  (tmp_path / "cut" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
  with pytest.raises(ValueError, match=r"cut/model\.safetensors: tensor .* beyond the end of the file"):
    import_torch(str(tmp_path / "cut"))
  (tmp_path / "cut" / "model.safetensors").write_bytes(data[:5])
  with pytest.raises(ValueError, match=r"cut/model\.safetensors: not a readable safetensors file"):
    import_torch(str(tmp_path / "cut"))
  (tmp_path / "ok" / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"ok has no config\.json"):
    import_torch(str(tmp_path / "ok"))


def test_nonfinite_weights_are_an_error_unless_allowed(tmp_path):
  def edit(sd):
    sd["model.norm.weight"] = sd["model.norm.weight"].copy()
    sd["model.norm.weight"][3] = np.nan
  path = _broken(tmp_path, edit)
  with pytest.raises(ConversionError, match=r"non finite tensors: model\.norm\.weight \(1 of 64 values\)"):
    import_torch(path)
  assert np.isnan(import_torch(path, allow_nonfinite=True).params["norm"]["scale"][3])
