"""One path through the real formats a user brings: mp4 files written by a real encoder (libx264)
and LLaVA-format JSON records -> the Grain pipeline with the real Qwen2 vocabulary -> training
steps of a small model of that vocabulary size (launch.train) -> its parameters -> export to the
official Hour-LLaVA layout and to transformers' LLaVA-OneVision -> loaded back (transformers for
the HF kind) -> launch.ask on one of the videos, with the visual tokens where the prompt's
placeholder is."""
from conftest import needs_torch

needs_torch()      # these tests compare against torch / transformers models: skip without it

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import QWEN_VOCAB, jit_apply
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.convert import import_torch
from hourjax.convert.io import load_params, read_meta
from hourjax.synthetic.videos import write_dataset
from launch import ask
from tools.convert_torch import convert
from hourjax.numerics import rel_err

STEPS = 2
BATCH = 8         # one sample per fake CPU device


@pytest.fixture(scope="module")
def trained(tmp_path_factory, qwen2_tokenizer):
  """Eight libx264 videos as a LLaVA JSON list; two training steps through launch.train."""
  from launch import train
  root = tmp_path_factory.mktemp("real")
  write_dataset(str(root / "data"), num_videos=BATCH, seconds=(16, 24), fps=2, size=64, seed=3, codec="libx264")
  records = [json.loads(line) for line in open(root / "data" / "annotations.jsonl")]
  with open(root / "data" / "llava.json", "w") as f:     # the published LLaVA layout: one JSON list
    json.dump([{k: r[k] for k in ("id", "video", "data_source", "conversations")} for r in records], f)
  workdir = str(root / "run")
  assert train.main(["--config", "configs/hour_llava.py:tiny,stage=3", "--workdir", workdir,
                     f"data.root={root / 'data'}", "data.sources=[{'annotations': 'llava.json'}]",
                     f"data.read.tokenizer={qwen2_tokenizer}", f"model.llm.vocab_size={QWEN_VOCAB}",
                     f"train.steps={STEPS}", f"data.batch_size={BATCH}", "train.checkpoint_every=10"]) == 0
  return {"root": root, "workdir": workdir, "records": records, "tokenizer": qwen2_tokenizer}


def test_training_with_the_real_vocabulary_skips_no_sample(trained):
  summary = json.load(open(os.path.join(trained["workdir"], "summary.json")))
  assert summary["last_step"] == STEPS and summary["data"]["skipped"] == 0
  assert summary["data"]["samples_video"] == BATCH * STEPS and np.isfinite(summary["last_loss"])
  rows = [json.loads(line) for line in open(os.path.join(trained["workdir"], "metrics.jsonl"))]
  assert not any(r.get("skipped") for r in rows)


def test_export_and_load_back(trained, tmp_path):
  """The trained parameters through the official layout (and back, bit for bit) and through
  transformers' LLaVA-OneVision (loaded by transformers, equal LLM logits and SigLIP features)."""
  params_dir = os.path.join(trained["workdir"], "params")
  params = load_params(params_dir)
  cfg_meta = read_meta(params_dir)
  for kind in ("hour_llava", "llava_onevision"):
    assert convert.main(["to-torch", params_dir, str(tmp_path / kind), "--kind", kind]) == 0
  back = import_torch(str(tmp_path / "hour_llava"))
  assert back.config.llm.vocab_size == QWEN_VOCAB == cfg_meta["config"]["llm"]["vocab_size"]
  jax.tree.map(np.testing.assert_array_equal, back.params, jax.tree.map(np.asarray, params))

  hf, info = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
      str(tmp_path / "llava_onevision"), dtype=torch.float32, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  from hourjax.models import build
  model = build.build("hour_llava", back.config)
  ids = np.array([[151644, 872, 198, 9707, 1879, 151645, 198]])
  ours = jit_apply(model, params, ids, method=lambda m, x: m.llm(x)[0])
  with torch.no_grad():
    theirs = hf.model.language_model(torch.tensor(ids)).last_hidden_state
    theirs = hf.lm_head(theirs).numpy()
  assert rel_err(ours, theirs) < 1e-5
  pixels = np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
  ours = jax.jit(lambda p, x: model.apply({"params": p}, x, False, method="encode_frames"))(params, pixels[None])[0]
  with torch.no_grad():
    theirs = hf.model.vision_tower(torch.tensor(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
  assert rel_err(ours, theirs.hidden_states[-1].numpy()) < 1e-5


def test_ask_puts_the_video_at_the_placeholder(trained, tmp_path, capsys):
  """launch.ask on a trained checkpoint with the real tokenizer: the prompt has one placeholder
  after `<|im_start|>user\\n`, the LLM input holds MemAug's visual tokens exactly there and the
  text around them, and generation answers."""
  params_dir = os.path.join(trained["workdir"], "params")
  r = trained["records"][0]
  video = str(trained["root"] / "data" / r["data_source"] / r["video"])
  argv = ["--params", params_dir, "--tokenizer", trained["tokenizer"], "--video", video, "--question",
          "What colour is the square?", "--max-new-tokens", "4", "--min-frames", "16", "--show-prompt"]
  assert ask.main(argv) == 0
  out = capsys.readouterr().out
  assert "<|im_start|>user\n<image: " in out and " visual tokens>\nThe video lasts for " in out and "\nA: " in out

  loaded, batch, _ = ask.prepare(ask.parser().parse_args(argv))
  ids = batch.input_ids[0]
  k = int(np.flatnonzero(ids == IMAGE_TOKEN_INDEX)[0])
  assert (ids == IMAGE_TOKEN_INDEX).sum() == 1 and k == 14 and ids[k - 3:k].tolist() == [151644, 872, 198]
  _, inter = jit_apply(loaded.model, loaded.params, batch.input_ids, batch.attention_mask,
                                **batch.model_inputs(), rng=jax.random.key(0), mutable="intermediates")
  inter = inter["intermediates"]
  embeds, visual = inter["inputs_embeds"][0][0], inter["memaug_visual_output"][0][0]
  n = ask.visual_tokens(loaded.cfg, batch)
  assert visual.shape[0] == n
  np.testing.assert_array_equal(embeds[k:k + n], visual)
  text = jit_apply(loaded.model, loaded.params, jnp.asarray(np.where(ids == IMAGE_TOKEN_INDEX, 0, ids)),
                            method=lambda m, x: m.llm.embed(x))
  np.testing.assert_array_equal(embeds[:k], text[:k])
  length = int(batch.attention_mask[0].sum())
  np.testing.assert_array_equal(embeds[k + n:length - 1 + n], text[k + 1:length])
