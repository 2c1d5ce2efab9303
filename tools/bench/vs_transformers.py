"""hourjax (jit, XLA:CPU) against transformers (torch eager, float32) on one small
LLaVA-OneVision-shaped model with the same weights: the vision tower on a clip of frames, the
decoder's training step (loss + backward) and its prefill; the training step's peak resident
memory; and the roofline that bounds any speed-up on this machine.

  .venv/bin/python -m tools.bench.vs_transformers [--seq 2048] [--frames 16] [--repeats 5]
  .venv/bin/python -m tools.bench.vs_transformers --attention blockwise   # the decoder's attention
  .venv/bin/python -m tools.bench.vs_transformers --attention blockwise --ops 15   # + where hourjax's step goes
  .venv/bin/python -m tools.bench.vs_transformers --attention blockwise --autodiff-dense   # A/B of ops/dense.py

The transformers model is built with random weights, saved, and converted with
`hourjax.convert.import_torch`, so both sides compute the same function (checked: relative
error of the outputs is printed). Both use every core of the host.

The roofline: each part's model FLOPs (`train.flops`: matmuls, causal attention at half)
divided by the best float32 matmul rate either library reaches on this host in the same run
(a 2048^2 matmul, best of 5) is the least time any implementation of that part can take here;
transformers' time over it is the largest speed-up over transformers this machine allows
("ceiling"), and the same at XLA's own matmul rate is the largest hourjax can reach here.

Peak memory: each library's training step runs once more in a fresh process with only the
model loaded and the step warmed up (compiled, for hourjax); the step's peak resident set
(VmHWM, reset before the step) minus the resident set before it. Both processes run with the
same glibc settings (allocations of 64 KiB and more are mapped and returned on free), so freed
memory does not hide in the heap. --ops N traces hourjax's training step and prints its time by
kind of instruction and its N slowest instructions (`hourjax/train/op_profile.py`). Results:
docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tools.bench.common import MALLOC_ENV, median_time, step_peak_bytes, torch_matmul_rate

VOCAB = 32000


def _token_ids(seq: int) -> np.ndarray:
  return np.random.default_rng(1).integers(0, VOCAB - 10, (1, seq))


def _build_checkpoint(seq: int, path: str) -> None:
  """A LLaVA-OneVision-shaped transformers model with random weights (seed 0), saved at path."""
  import torch
  import transformers
  vision = transformers.SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                           num_attention_heads=6, image_size=224, patch_size=14)
  text = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=512, intermediate_size=1408, num_hidden_layers=6,
                                  num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6,
                                  max_position_embeddings=seq, tie_word_embeddings=False)
  cfg = transformers.LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                          vision_feature_layer=-1, vision_feature_select_strategy="full",
                                          image_token_index=VOCAB - 1, video_token_index=VOCAB - 2)
  torch.manual_seed(0)
  transformers.LlavaOnevisionForConditionalGeneration(cfg).float().save_pretrained(path)


def _torch_model(path: str):
  import torch
  import transformers
  return transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


def _torch_step(hf, ids: np.ndarray):
  """transformers' training step: mean next-token CE of the decoder and its gradient."""
  import torch
  ids_t = torch.from_numpy(ids)

  def step():
    hf.zero_grad(set_to_none=True)
    logits = hf.lm_head(hf.model.language_model(ids_t).last_hidden_state)
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids_t[0, 1:])
    loss.backward()
    return loss
  return step


def _jax_step(qwen, ids: np.ndarray, params):
  """hourjax's training step on the same tokens: (params) -> (loss, grads), compiled for `params`."""
  import jax
  from hourjax.data.batch import PackedBatch
  from hourjax.train.step import lm_loss_fn
  batch = PackedBatch(ids, ids, np.broadcast_to(np.arange(ids.shape[1]), ids.shape), np.ones_like(ids))
  return jax.jit(jax.value_and_grad(lambda p: lm_loss_fn(qwen, p, batch)[0])).lower(params).compile()


def _import(path: str, attention: str):
  """(hourjax config, params, SigLIP, Qwen2) converted from the transformers checkpoint."""
  import dataclasses
  import jax
  import jax.numpy as jnp
  from hourjax.convert.api import import_torch
  from hourjax.models import build
  conv = import_torch(path, key=jax.random.key(0))
  cfg, params = conv.config, jax.tree.map(jnp.asarray, conv.params)
  return (cfg, params, build.build("siglip", cfg.vision),
          build.build("qwen2", dataclasses.replace(cfg.llm, attention=attention)))


def _memory_child(lib: str, path: str, seq: int, attention: str) -> int:
  """One library's training-step peak memory, in this (fresh) process."""
  ids = _token_ids(seq)
  if lib == "torch":
    import torch
    torch.set_grad_enabled(True)
    hf = _torch_model(path)
    step = _torch_step(hf, ids)
    step()
    hf.zero_grad(set_to_none=True)
    return step_peak_bytes(step)
  import jax
  _, params, _, qwen = _import(path, attention)
  params = params["llm"]
  step = _jax_step(qwen, ids, params)
  jax.block_until_ready(step(params))
  return step_peak_bytes(lambda: jax.block_until_ready(step(params)))


def _peak_memory(lib: str, path: str, seq: int, attention: str, autodiff_dense: bool = False) -> int:
  env = dict(os.environ, **MALLOC_ENV)
  cmd = [sys.executable, "-m", "tools.bench.vs_transformers", "--memory-of", lib, "--checkpoint", path,
         "--seq", str(seq), "--attention", attention] + ["--autodiff-dense"] * autodiff_dense
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--attention", default="xla", help="the decoder's attention (ops.attention.IMPLEMENTATIONS)")
  p.add_argument("--ops", type=int, default=0, metavar="N",
                 help="trace hourjax's training step: its time by kind and the N slowest instructions")
  p.add_argument("--autodiff-dense", action="store_true",
                 help="dense layers' backward by autodiff of lax.dot_general (before ops/dense.py), for A/B")
  p.add_argument("--memory-of", choices=("torch", "jax"), help=argparse.SUPPRESS)   # the peak-memory child
  p.add_argument("--checkpoint", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.autodiff_dense:
    from jax import lax
    from hourjax.ops import dense
    dense.dot_general = lax.dot_general     # layers.dense looks it up at each call
  if a.memory_of:
    print(json.dumps({"peak_bytes": _memory_child(a.memory_of, a.checkpoint, a.seq, a.attention)}))
    return 0
  import jax
  import torch
  from hourjax.numerics import rel_err
  from hourjax.train import flops
  from launch.profile import matmul_peak

  path = tempfile.mkdtemp()
  _build_checkpoint(a.seq, path)
  hf = _torch_model(path)
  hj_cfg, params, siglip, qwen = _import(path, a.attention)
  rows = []

  # 1. vision tower: frames [T, 224, 224, 3]
  px = np.random.default_rng(0).uniform(-1, 1, (a.frames, 224, 224, 3)).astype(np.float32)
  px_t = torch.from_numpy(px).permute(0, 3, 1, 2).contiguous()
  vis = jax.jit(lambda p, x: siglip.apply({"params": p}, x, feature_layer=-1))
  with torch.no_grad():
    ref = hf.model.vision_tower(px_t, output_hidden_states=True).hidden_states[-1].numpy()
  err = rel_err(np.asarray(vis(params["vision"], px)), ref)
  with torch.no_grad():
    t_hf = median_time(lambda: hf.model.vision_tower(px_t, output_hidden_states=True), a.repeats)
  t_hj = median_time(lambda: vis(params["vision"], px).block_until_ready(), a.repeats)
  rows.append(("SigLIP forward", f"{a.frames} frames x 256 patches", flops.siglip_forward(hj_cfg.vision, a.frames),
               t_hf, t_hj, err))

  # 2. decoder prefill: logits of one sequence
  ids = _token_ids(a.seq)
  ids_t = torch.from_numpy(ids)
  prefill = jax.jit(lambda p, x: qwen.apply({"params": p}, x)[0])
  with torch.no_grad():
    ref = hf.lm_head(hf.model.language_model(ids_t).last_hidden_state).numpy()
  err = rel_err(np.asarray(prefill(params["llm"], ids)), ref)
  with torch.no_grad():
    t_hf = median_time(lambda: hf.lm_head(hf.model.language_model(ids_t).last_hidden_state), a.repeats)
  t_hj = median_time(lambda: prefill(params["llm"], ids).block_until_ready(), a.repeats)
  rows.append(("Qwen2 prefill (logits)", f"1 x {a.seq} tokens", flops.qwen2_forward(hj_cfg.llm, 1, a.seq),
               t_hf, t_hj, err))

  # 3. decoder training step: mean next-token CE and its gradient
  hf_step, grad = _torch_step(hf, ids), _jax_step(qwen, ids, params["llm"])
  loss_hj, _ = grad(params["llm"])
  err = rel_err(np.asarray(loss_hj), hf_step().detach().numpy())
  t_hf = median_time(hf_step, a.repeats)
  t_hj = median_time(lambda: jax.block_until_ready(grad(params["llm"])), a.repeats)
  rows.append(("Qwen2 training step (loss + grad)", f"1 x {a.seq} tokens",
               flops.decoder_step(hj_cfg.llm, 1, a.seq)["total"], t_hf, t_hj, err))

  rate_jax, rate_torch = matmul_peak(), torch_matmul_rate()
  ops_table = ""
  if a.ops:
    from hourjax.train import op_profile
    trace = tempfile.mkdtemp(prefix="hourjax_trace_")
    wall = op_profile.traced(lambda: jax.block_until_ready(grad(params["llm"])), 2, trace)
    ops_table = op_profile.format_table(op_profile.breakdown(trace, grad.as_text(), 2, wall), top=a.ops,
                                        peak_flops=rate_jax)
  rate = max(rate_jax, rate_torch)
  mem = {lib: _peak_memory(lib, path, a.seq, a.attention, a.autodiff_dense) for lib in ("torch", "jax")}

  print("| part | shape | GFLOP | transformers (s) | hourjax (s) | speed-up | ceiling | ceiling at XLA's rate "
        "| rel. err |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, shape, f, t_hf, t_hj, err in rows:
    print(f"| {name} | {shape} | {f / 1e9:.1f} | {t_hf:.3f} | {t_hj:.3f} | {t_hf / t_hj:.2f}x | "
          f"{t_hf * rate / f:.2f}x | {t_hf * rate_jax / f:.2f}x | {err:.1e} |")
  print("\n| part | transformers GFLOP/s | of torch's matmul rate | hourjax GFLOP/s | of XLA's matmul rate |")
  print("|---|---|---|---|---|")
  for name, _, f, t_hf, t_hj, _ in rows:
    print(f"| {name} | {f / t_hf / 1e9:.0f} | {f / t_hf / rate_torch:.0%} | {f / t_hj / 1e9:.0f} | "
          f"{f / t_hj / rate_jax:.0%} |")
  print(f"\nfloat32 matmul rate (2048^2, best of 5): jax {rate_jax / 1e9:.0f} GFLOP/s, torch {rate_torch / 1e9:.0f} "
        f"GFLOP/s; ceiling = transformers' time / (GFLOP / the better rate); at XLA's rate: / (GFLOP / jax's rate).")
  print(f"training step peak resident memory above the loaded model: transformers {mem['torch'] / 2**20:.0f} MiB, "
        f"hourjax {mem['jax'] / 2**20:.0f} MiB ({mem['jax'] / mem['torch']:.2f}x)")
  if ops_table:
    print(f"\nhourjax's training step, traced (shares of the traced step; XLA's matmul rate as the peak):\n{ops_table}")
  dense_bwd = "; dense backward by autodiff" if a.autodiff_dense else ""
  print(f"(decoder attention {a.attention}{dense_bwd}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"jax {jax.__version__}, {os.cpu_count()} CPUs)")
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
