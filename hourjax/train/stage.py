"""A training stage: `loop.train`, its context phases, and its final parameters.

    from hourjax.train.stage import run_stage
    run_stage(load("configs/prolongvid.py:7b,stage=context_extension", [...]), "/runs/plv-ctx")

With `train.context_schedule` ((steps, seq_len), ...) each phase trains in
<workdir>/phase<i>_<seq_len> from the previous phase's parameters, with its own schedule and
data seed (data.seed + i); finished phases are skipped when the stage is re-run. The final
parameters go to <workdir>/params (the next stage's train.init).
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import ml_collections

from hourjax.convert.io import save_params
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
