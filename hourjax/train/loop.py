"""The training loop: config -> mesh, model, data, optimizer -> jitted steps, with Orbax
checkpoints that resume exactly, preemption handling and metrics.

    from hourjax.config import load
    from hourjax.train.loop import train
    summary = train(load("configs/hour_llava.py:tiny,stage=3", ["data.root=/tmp/synth"]), "/tmp/run")

Resume: calling `train` again with the same workdir continues from the latest checkpoint (the
state, the data iterator and the step), so a preempted or killed run repeats no batch and skips
none. SIGTERM saves a checkpoint at the end of the current step and returns.

A run with `train.decoder_only` trains the decoder (`model.llm`) alone on packed text
(`hourjax.data.text`, ProLongVid's context extension); `run_stage` runs its progressive context
schedule phase by phase and writes the final parameters.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hourjax.config import model_config
from hourjax.convert.io import load_params, read_meta
from hourjax.data import chat, pipeline, text
from hourjax.models import build
from hourjax.parallel import mesh as mesh_lib
from hourjax.train import flops as flops_lib
from hourjax.train import optimizer as opt_lib
from hourjax.train import step as step_lib
from hourjax.train.checkpoint import Checkpoints, abstract_like
from hourjax.train.metrics import DataCounters, MetricWriter

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


class NonFiniteLoss(RuntimeError):
  pass


def check_run(run: ml_collections.ConfigDict) -> None:
  """Start-up validation: each inconsistent value is named."""
  t = run.train
  if t.dtype not in DTYPES:
    raise ValueError(f"train.dtype={t.dtype!r}: expected one of {sorted(DTYPES)}")
  for key in ("init", "init_llm"):
    path = t.get(key, "")
    if path and not os.path.exists(os.path.join(path, "hourjax.json")):
      raise FileNotFoundError(f"train.{key}={path!r}: no hourjax checkpoint there (convert one with "
                              "tools/convert_torch/convert.py, or give the previous stage's workdir/params)")
  if t.get("decoder_only", False):
    if t.steps <= 0:
      raise ValueError("train.steps must be > 0 for decoder-only runs (packed text repeats forever)")
    if not run.data.documents or not run.data.tokenizer:
      raise ValueError("a decoder-only run needs data.documents (JSONL / ArrayRecord globs) and data.tokenizer")
    for steps, length in t.get("context_schedule", ()):
      if steps <= 0 or length < 2:
        raise ValueError(f"train.context_schedule entry ({steps}, {length}): need steps > 0, length >= 2")
  devices = jax.device_count()
  sizes = dict(run.mesh)
  fixed = math.prod(v for v in sizes.values() if v > 0)
  if fixed > devices or (-1 not in sizes.values() and fixed != devices):
    raise ValueError(f"mesh={sizes} needs {fixed} devices; {devices} are available")
  shards = mesh_lib.batch_shards(mesh_lib.make_mesh(sizes))
  if run.data.batch_size % shards or run.data.batch_size % jax.process_count():
    raise ValueError(f"data.batch_size={run.data.batch_size} is not divisible by the mesh's "
                     f"{shards} batch shards and {jax.process_count()} processes")
  k = t.optimizer.accumulate
  if run.data.batch_size % (k * shards):
    raise ValueError(f"train.optimizer.accumulate={k}: data.batch_size={run.data.batch_size} must split "
                     f"into {k} micro-batches that each divide by the {shards} batch shards")


def _scalar(x: Any) -> float:
  return float(np.asarray(x))


def train(run: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `run` in `workdir` (checkpoints/, metrics.jsonl, tensorboard/); returns a summary."""
  check_run(run)
  t = run.train
  decoder_only = t.get("decoder_only", False)
  kind = "qwen2" if decoder_only else "hour_llava"
  full_cfg = model_config(run.model)
  cfg = full_cfg.llm if decoder_only else full_cfg
  opt_cfg = opt_lib.OptimizerConfig(**{**t.optimizer.to_dict(), "lr": dict(t.optimizer.lr)})
  mesh = mesh_lib.make_mesh(dict(run.mesh))
  model = build.build(kind, cfg, dtype=DTYPES[t.dtype])
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if decoder_only:
    data_iter = iter(text.from_config(run.data, **where))
  else:
    data_iter = iter(pipeline.from_config(run.data, cfg, **where))
  steps = t.steps or pipeline.epoch_batches(run.data)     # 0: one epoch, as the official runs
  abstract = build.abstract_params(kind, cfg)
  specs = mesh_lib.param_specs(build.logical_specs(kind, cfg), abstract, mesh)
  optimizer = opt_lib.make_optimizer(opt_cfg, abstract, steps)
  lr_schedules = opt_lib.schedules(opt_cfg, steps)      # for logging; the optimizer holds its own
  state_sh = mesh_lib.shardings(step_lib.state_specs(optimizer, specs, abstract), mesh)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), every=t.checkpoint_every,
                      keep=t.checkpoint_keep, use_async=t.checkpoint_async)
  lead = jax.process_index() == 0
  writer = MetricWriter(workdir, steps, enabled=lead)
  counters = DataCounters()
  run_dict = {"config": run.to_dict(), "workdir": os.path.abspath(workdir)}

  tok_path = run.data.tokenizer if decoder_only else run.data.read.tokenizer
  tokenizer = chat.load_tokenizer(tok_path) if tok_path else None
  if tokenizer is not None:
    tokenizer.check_vocab(full_cfg.llm.vocab_size)
  template = tokenizer.template_ids() if tokenizer is not None and not decoder_only else ()

  def loss(params, batch, rng, modality):
    if decoder_only:
      return step_lib.lm_loss_fn(model, params, batch, rng)
    return step_lib.loss_fn(model, opt_lib.stop_frozen(params, opt_cfg), batch, rng, modality, template)

  jitted: dict[str, Any] = {}

  def step_fn(modality: str):
    if modality not in jitted:
      fn = step_lib.make_train_step(lambda p, b, r: loss(p, b, r, modality), optimizer, opt_cfg.accumulate)
      jitted[modality] = jax.jit(fn, in_shardings=(state_sh, None, None), out_shardings=(state_sh, None),
                                 donate_argnums=0)
    return jitted[modality]

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(signal=sig))
  rng = jax.random.key(t.seed)
  with mesh_lib.activate(mesh):
    start = ckpts.latest()
    if start is not None:
      abstract_state = abstract_like(jax.eval_shape(lambda p: step_lib.init_state(p, optimizer), abstract), state_sh)
      state, _ = ckpts.restore(start, abstract_state, data_iter)
      logging.info("resumed from step %d", start)
    else:
      start = 0
      params = initial_params(run, kind, cfg, mesh, abstract_like(abstract, state_sh.params))
      state = jax.jit(lambda p: step_lib.init_state(p, optimizer), out_shardings=state_sh)(params)
    losses = []
    step_time = time.perf_counter()
    try:
      for step in range(start, steps):
        batch = next(data_iter)
        meta = batch.pop("meta", None) or {"stream": "text", "ids": batch["input_ids"], "skipped": [],
                                             "truncated": []}
        modality = pipeline.MODALITY.get(meta["stream"], "text")
        global_batch = pipeline.to_global(batch, mesh, None if decoder_only else cfg)
        state, m = step_fn(modality)(state, global_batch, rng)
        m = jax.device_get(m)
        loss_value = _scalar(m["loss"])
        if not np.isfinite(loss_value):
          path = os.path.join(workdir, f"nonfinite_step_{step + 1}.json")
          if lead:
            with open(path, "w") as f:
              json.dump({"step": step + 1, "metrics": {k: _scalar(v) for k, v in m.items()},
                         "batch": meta, "last_checkpoint": ckpts.latest()}, f, indent=1)
          raise NonFiniteLoss(f"loss is {loss_value} at step {step + 1}; nothing saved after step "
                              f"{ckpts.latest()}; diagnostics in {path}")
        now = time.perf_counter()
        dt, step_time = now - step_time, now
        real = batch["attention_mask"] if "attention_mask" in batch else np.asarray(batch["segment_ids"]) > 0
        tokens = int(np.asarray(real).sum()) * jax.process_count()
        scalars = {"loss": loss_value, "accuracy": _scalar(m["correct_tokens"]) / max(1, _scalar(m["answer_tokens"])),
                   "grad_norm": _scalar(m["grad_norm"]), "step_time_s": dt, "tokens_per_s": tokens / dt,
                   "supervised_tokens": _scalar(m["supervised_tokens"])}
        for g, sched in lr_schedules.items():
          scalars[f"lr/{g}"] = float(sched(step))
        if t.peak_flops:
          scalars["mfu"] = _step_flops(cfg, global_batch, opt_cfg) / dt / (t.peak_flops * jax.device_count())
        writer.write(step + 1, scalars, counters.add(meta))
        losses.append(loss_value)
        if t.stop_after and step + 1 - start >= t.stop_after:
          stop["signal"] = "stop_after"
        if ckpts.due(step + 1, steps) or stop["signal"] is not None:
          ckpts.save(step + 1, state, data_iter, {**run_dict, "step": step + 1})
        if stop["signal"] is not None:
          logging.warning("%s: saved step %d and stopping", stop["signal"], step + 1)
          break
    finally:
      signal.signal(signal.SIGTERM, previous)
      ckpts.close()
      writer.close()
      if hasattr(data_iter, "close"):
        data_iter.close()
  summary = {"first_step": start + 1, "last_step": start + len(losses), "steps": steps,
             "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
             "preempted": stop["signal"] is not None, "data": dict(counters.counts)}
  if lead:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return {**summary, "state": state}


def initial_params(run: ml_collections.ConfigDict, kind: str, cfg: Any, mesh: Any, abstract: Any) -> Any:
  """Fresh parameters (train.seed), or `train.init`'s. An Hour-LLaVA checkpoint initialises a
  decoder-only run with its LLM; `train.init_llm` (a decoder checkpoint, e.g. the context
  extension's params) then replaces an Hour-LLaVA run's LLM."""
  t = run.train
  if t.init:
    saved = read_meta(t.init)["kind"]
    if saved == kind:
      params = load_params(t.init, abstract)
    elif kind == "qwen2" and saved == "hour_llava":
      params = load_params(t.init, {"llm": abstract, **_rest_of(t.init, "llm")})["llm"]
    else:
      raise ValueError(f"train.init={t.init!r} holds a {saved!r} model; this run trains {kind}")
  else:
    params = mesh_lib.init_sharded(kind, cfg, mesh, jax.random.key(t.seed))
  if t.get("init_llm", ""):
    if kind != "hour_llava":
      raise ValueError("train.init_llm replaces an Hour-LLaVA run's decoder; use train.init here")
    meta = read_meta(t.init_llm)
    if meta["kind"] != "qwen2":
      raise ValueError(f"train.init_llm={t.init_llm!r} holds a {meta['kind']!r} model; expected qwen2")
    if meta["config"].get("rope_theta") != cfg.llm.rope_theta:
      logging.warning("train.init_llm was trained with rope_theta %s; this run uses %s",
                      meta["config"].get("rope_theta"), cfg.llm.rope_theta)
    params = {**params, "llm": load_params(t.init_llm, abstract["llm"])}
  return params


def _rest_of(path: str, keep: str) -> dict:
  """Abstract leaves (restored on the host, then dropped) for a checkpoint's other subtrees."""
  from hourjax.models.build import abstract_params, config_from_dict
  meta = read_meta(path)
  full = abstract_params(meta["kind"], config_from_dict(meta["kind"], meta["config"]))
  return {k: v for k, v in full.items() if k != keep}


def run_stage(run: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`train`, then the final parameters to <workdir>/params (the next stage's train.init).
  With `train.context_schedule` ((steps, seq_len), ...) each phase trains in
  <workdir>/phase<i>_<seq_len> from the previous phase's parameters, with its own schedule and
  data seed (data.seed + i); finished phases are skipped when the stage is re-run."""
  from hourjax.convert.io import save_params
  check_run(run)
  schedule = [tuple(x) for x in run.train.get("context_schedule", ())]
  kind = "qwen2" if run.train.get("decoder_only", False) else "hour_llava"
  cfg = model_config(run.model)
  cfg = cfg.llm if kind == "qwen2" else cfg
  phases = []
  init = run.train.init
  for i, (steps, length) in enumerate(schedule):
    phase = run.copy_and_resolve_references()
    phase.train.steps, phase.data.seq_len, phase.data.seed = steps, length, run.data.seed + i
    phase.train.init = init
    phase_dir = os.path.join(workdir, f"phase{i}_{length}")
    params_dir = os.path.join(phase_dir, "params")
    init = params_dir
    if os.path.exists(os.path.join(params_dir, "hourjax.json")):
      phases.append({"phase": i, "seq_len": length, "skipped": "finished earlier"})
      continue
    summary = train(phase, phase_dir)
    state = summary.pop("state")
    phases.append({"phase": i, "seq_len": length, **summary})
    if summary["preempted"] or summary["last_step"] != summary["steps"]:
      return {"phases": phases, "preempted": True}
    save_params(params_dir, state.params, kind, cfg)
  if schedule:
    import shutil
    shutil.rmtree(os.path.join(workdir, "params"), ignore_errors=True)
    if jax.process_index() == 0:
      shutil.copytree(init, os.path.join(workdir, "params"))
    return {"phases": phases, "preempted": False}
  else:
    summary = train(run, workdir)
    final = summary.pop("state").params
    if not summary["preempted"] and summary["last_step"] == summary["steps"]:
      save_params(os.path.join(workdir, "params"), final, kind, cfg)
    return summary


def _step_flops(cfg, batch: dict, opt_cfg: opt_lib.OptimizerConfig) -> float:
  layout = batch.get("layout")
  b, text = batch["input_ids"].shape
  if layout is None:
    return flops_lib.decoder_step(getattr(cfg, "llm", cfg), b, text)["total"]
  frames = batch.get("features", batch.get("pixel_values")).shape[1]
  return sum(flops_lib.hour_llava_step(
      cfg, b, text, frames, layout.memory_frames.shape[1], layout.retained_frames.shape[1],
      pixels="pixel_values" in batch, vision_trainable="vision" in opt_cfg.trainable).values())
