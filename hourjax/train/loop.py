"""The training loop: it iterates, logs and checkpoints; everything periodic is a hook.

    from hourjax.config import load
    from hourjax.train.loop import train
    summary = train(load("configs/hour_llava.py:tiny,stage=3", ["data.root=/tmp/synth"]), "/tmp/run")

The program (model, optimizer, shardings, jitted step) comes from `program.build`. Hooks run
after a step when due (every N steps, and at the last): the non-finite check (every step; it
stops the run before anything is saved), held-out evaluation (`run.evals`, each every N steps,
as big_vision's evaluators), MFU (with `train.peak_flops`) and the checkpoint.

Resume: calling `train` again with the same workdir continues from the latest checkpoint (the
state, the data iterator and the step), so a preempted or killed run repeats no batch and skips
none. SIGTERM saves a checkpoint at the end of the current step and returns. Stages with
context phases and their final parameters: `hourjax.train.stage`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from hourjax.cli import writable_dir
from hourjax.data import chat, pipeline
from hourjax.data.batch import Meta
from hourjax.parallel import mesh as mesh_lib
from hourjax.train import evaluate as eval_lib
from hourjax.train import feed
from hourjax.train import program as program_lib
from hourjax.train.checkpoint import Checkpoints
from hourjax.train.metrics import DataCounters, MetricWriter
from hourjax.train.validate import problems_of, raise_problems


class NonFiniteLoss(RuntimeError):
  pass


def check_run(run: ml_collections.ConfigDict) -> None:
  """Start-up checks, before anything is built: every bad field of the config (`validate`) and
  everything missing that it points at (init checkpoints, a decoder-only run's corpus), in one error."""
  problems, t = list(problems_of(run)), run.train
  for key in ("init", "init_llm"):
    path = t.get(key, "")
    if path and not os.path.exists(os.path.join(path, "hourjax.json")):
      problems.append(f"train.{key}={path!r}: no hourjax checkpoint there (convert one with "
                      "tools/convert_torch/convert.py, or give the previous stage's workdir/params)")
  if t.get("decoder_only", False):      # what the run reads (aot_compile and profile need none)
    for field, what in (("documents", "JSONL / ArrayRecord globs"), ("tokenizer", "a tokenizer directory")):
      if not run.data.get(field):
        problems.append(f"data.{field}={run.data.get(field)!r}: a decoder-only run needs {what}")
  raise_problems(problems)


def _scalar(x: Any) -> float:
  return float(np.asarray(x))


# -- hooks --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
  """What a hook sees after a step."""
  number: int                 # steps done
  state: Any
  metrics: dict[str, float]   # this step's scalars so far (a hook may add its own)
  batch: Any
  meta: Meta
  seconds: float


@dataclasses.dataclass
class Hook:
  """`fn(step) -> scalars or None`, run after steps that are multiples of `every` (0: never),
  and after the last when `at_end`."""
  name: str
  every: int
  fn: Callable[[Step], dict[str, float] | None]
  at_end: bool = True

  def due(self, step: int, last: int) -> bool:
    return (self.every > 0 and step % self.every == 0) or (self.at_end and step == last)


def nonfinite_hook(workdir: str, ckpts: Checkpoints, lead: bool) -> Hook:
  """A NaN or inf loss stops the run with its diagnostics, before anything is saved."""
  def check(s: Step) -> None:
    if np.isfinite(s.metrics["loss"]):
      return
    path = os.path.join(workdir, f"nonfinite_step_{s.number}.json")
    if lead:
      with open(path, "w") as f:
        json.dump({"step": s.number, "metrics": s.metrics, "batch": dataclasses.asdict(s.meta),
                   "last_checkpoint": ckpts.latest()}, f, indent=1)
    raise NonFiniteLoss(f"loss is {s.metrics['loss']} at step {s.number}; nothing saved after step "
                        f"{ckpts.latest()}; diagnostics in {path}")
  return Hook("nonfinite", 1, check)


def mfu_hook(program: program_lib.Program, peak_flops: float) -> Hook:
  """Model FLOPs utilisation of the step against `peak_flops` per device."""
  def mfu(s: Step) -> dict[str, float]:
    flops = program.task.flops(s.batch, program.opt_cfg)["total"]
    return {"mfu": flops / s.seconds / (peak_flops * jax.device_count())}
  return Hook("mfu", 1 if peak_flops else 0, mfu, at_end=bool(peak_flops))


def eval_hook(name: str, every: int, program: program_lib.Program, data: Any, where: dict) -> Hook:
  """Held-out loss and answer-token accuracy on a finite data section, logged as eval/<name>/*."""
  def run_eval(s: Step) -> dict[str, float]:
    batches = ((feed.to_global(b, program.mesh, program.task.spec), m)
               for b, m in program.task.data(data, **where) if b is not None)    # None: the end report
    out = eval_lib.evaluate(program.model, s.state.params, batches, loss=program.eval_loss)
    return {f"eval/{name}/{k}": v for k, v in out.items()}
  return Hook(f"eval/{name}", every, run_eval)


def eval_data(run: ml_collections.ConfigDict, overrides: Any) -> ml_collections.ConfigDict:
  """The run's data section with an evaluator's fields replaced, read once (epochs = 1)."""
  data = run.data.copy_and_resolve_references()
  with data.unlocked():
    for k, v in dict(overrides).items():
      data[k] = v
    data.epochs = 1
  return data


def checkpoint_hook(ckpts: Checkpoints, data_iter: Any, run_dict: dict, counters: DataCounters) -> Hook:
  """The state, the data iterator and the run's progress (its step and data counts, so that a
  resumed run's summary counts every sample since step 0)."""
  return Hook("checkpoint", ckpts.every, lambda s: ckpts.save(
      s.number, s.state, data_iter, {**run_dict, "step": s.number, "data": dict(counters.counts)}))


# -- the loop -----------------------------------------------------------------------------------

def train(run: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `run` in `workdir` (checkpoints/, metrics.jsonl, tensorboard/); returns a summary."""
  check_run(run)
  writable_dir(workdir)
  t = run.train
  task = program_lib.task_of(run)
  where = dict(process_index=jax.process_index(), process_count=jax.process_count())
  tok_path = task.tokenizer_path(run.data)
  tokenizer = chat.load_tokenizer(tok_path) if tok_path else None
  if tokenizer is not None:
    tokenizer.check_vocab(task.model.llm.vocab_size)
  template = task.template_ids(tokenizer)
  steps = t.steps or pipeline.epoch_batches(run.data)     # 0: one epoch, as the official runs
  program = program_lib.build(run, steps=steps, template_ids=template, task=task)
  data_iter = task.data(run.data, **where)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), every=t.checkpoint_every,
                      keep=t.checkpoint_keep, use_async=t.checkpoint_async)
  lead = jax.process_index() == 0
  writer = MetricWriter(workdir, steps, enabled=lead)
  counters = DataCounters()
  run_dict = {"config": run.to_dict(), "workdir": os.path.abspath(workdir)}
  hooks = [nonfinite_hook(workdir, ckpts, lead), mfu_hook(program, t.peak_flops)]
  hooks += [eval_hook(name, ev.every, program, eval_data(run, ev.get("data", {})), where)
            for name, ev in run.get("evals", {}).items()]
  hooks.append(checkpoint_hook(ckpts, data_iter, run_dict, counters))

  stop = {"signal": None}
  previous = signal.signal(signal.SIGTERM, lambda sig, frame: stop.update(signal=sig))
  rng = jax.random.key(t.seed)
  with mesh_lib.activate(program.mesh):
    resumed = ckpts.restore_latest(program.abstract_state(), data_iter)
    if resumed is not None:
      start, state, saved = resumed
      counters.counts.update(saved.get("data", {}))
      logging.info("resumed from step %d", start)
    else:
      start = 0
      state = program.init_state(program.initial_params(run))
    losses = []
    exhausted = False
    step_time = time.perf_counter()
    try:
      step = start
      while step < steps:
        try:
          batch, meta = next(data_iter)
        except StopIteration:      # a finite run whose skips left fewer batches than counted
          batch = meta = None
        if not feed.everyone_has_data(batch is not None):
          exhausted = True
          if meta is not None:       # the pipeline's last report (skips, the dropped last batch)
            writer.note(step, counters.add(meta))
          break
        state, m = program.step(state, feed.to_global(batch, program.mesh, task.spec), rng)
        m = jax.device_get(m)
        now = time.perf_counter()
        dt, step_time = now - step_time, now
        tokens = int(np.asarray(batch.tokens()).sum()) * jax.process_count()
        scalars = {"loss": _scalar(m["loss"]),
                   "accuracy": _scalar(m["correct_tokens"]) / max(1, _scalar(m["answer_tokens"])),
                   "grad_norm": _scalar(m["grad_norm"]), "step_time_s": dt, "tokens_per_s": tokens / dt,
                   "supervised_tokens": _scalar(m["supervised_tokens"]),
                   **{f"lr/{g}": float(sched(step)) for g, sched in program.schedules.items()}}
        if t.stop_after and step + 1 - start >= t.stop_after:
          stop["signal"] = "stop_after"
        reported = counters.add(meta)          # before the hooks: a checkpoint holds this step's counts
        done = Step(step + 1, state, scalars, batch, meta, dt)
        for hook in hooks:
          if hook.due(step + 1, steps) or (hook.name == "checkpoint" and stop["signal"] is not None):
            scalars.update(hook.fn(done) or {})
        writer.write(step + 1, scalars, reported)
        losses.append(scalars["loss"])
        step += 1
        if stop["signal"] is not None:
          logging.warning("%s: saved step %d and stopping", stop["signal"], step)
          break
      if exhausted and losses and ckpts.latest() != step:
        logging.warning("the data ended after step %d of %d (samples were skipped): saved it", step, steps)
        ckpts.save(step, state, data_iter, {**run_dict, "step": step, "data": dict(counters.counts)})
    finally:
      signal.signal(signal.SIGTERM, previous)
      ckpts.close()
      writer.close()
      if hasattr(data_iter, "close"):
        data_iter.close()
  summary = {"first_step": start + 1, "last_step": start + len(losses), "steps": steps,
             "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
             "preempted": stop["signal"] is not None, "data_ended": exhausted, "data": dict(counters.counts)}
  if lead:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return {**summary, "state": state}
