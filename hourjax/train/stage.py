"""A training stage: `loop.train`, its context phases, and its final parameters; a recipe: stages
in order, each from the previous one's parameters.

    from hourjax.train.stage import run_recipe, run_stage
    run_stage(load("configs/prolongvid.py:7b,stage=context_extension", [...]), "/runs/plv-ctx")
    run_recipe([(name, load(f"configs/prolongvid.py:7b,stage={name}", [...])) for name in RECIPE], "/runs/plv")

With `train.context_schedule` ((steps, seq_len), ...) each phase trains in
<workdir>/phase<i>_<seq_len> from the previous phase's parameters, with its own schedule and
data seed (data.seed + i); finished phases are skipped when the stage is re-run. The final
parameters go to <workdir>/params (the next stage's train.init).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Sequence

import jax
import ml_collections

from hourjax.convert.io import read_meta, save_params
from hourjax.train import program as program_lib
from hourjax.train.loop import train


def finished(summary: dict) -> bool:
  """Not stopped early: every step ran, or the data of a finite run ended (skips make an epoch
  shorter than counted)."""
  return not summary["preempted"] and (summary["last_step"] == summary["steps"] or summary["data_ended"])


def run_stage(run: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  task = program_lib.task_of(run)
  schedule = [tuple(x) for x in run.train.get("context_schedule", ())]
  if not schedule:
    summary = train(run, workdir)
    final = summary.pop("state").params
    if finished(summary):
      save_params(os.path.join(workdir, "params"), final, task.kind, task.cfg)
    return summary
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
    if not finished(summary):
      return {"phases": phases, "preempted": True}
    save_params(params_dir, state.params, task.kind, task.cfg)
  shutil.rmtree(os.path.join(workdir, "params"), ignore_errors=True)
  if jax.process_index() == 0:
    shutil.copytree(init, os.path.join(workdir, "params"))
  return {"phases": phases, "preempted": False}


def run_recipe(stages: Sequence[tuple[str, ml_collections.ConfigDict]], workdir: str) -> dict[str, Any]:
  """Each (name, run) in order in <workdir>/<i>_<name>, initialised from the previous stage's
  params: a decoder's (the context extension) replace the next model's LLM (`train.init_llm`),
  any other's are its `train.init`. Stages whose params exist are skipped when re-run; a stage
  that stops early (preempted) stops the recipe, and re-running continues it."""
  done, previous = [], ""
  for i, (name, run) in enumerate(stages):
    stage_dir = os.path.join(workdir, f"{i}_{name}")
    params = os.path.join(stage_dir, "params")
    if not os.path.exists(os.path.join(params, "hourjax.json")):
      run = run.copy_and_resolve_references()
      if previous:
        decoder_into_model = read_meta(previous)["kind"] == "qwen2" and not run.train.get("decoder_only", False)
        run.train["init_llm" if decoder_into_model else "init"] = previous
      summary = run_stage(run, stage_dir)
      done.append({"stage": name, **summary})
      if not os.path.exists(os.path.join(params, "hourjax.json")):
        return {"stages": done, "preempted": True}
    else:
      done.append({"stage": name, "skipped": "finished earlier"})
    previous = params
  return {"stages": done, "preempted": False}
