"""Training checkpoints: the train state (sharded arrays), the Grain iterator state and the run's
config and progress, saved together by one Orbax CheckpointManager.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
(even SIGKILL mid-save) leaves the previous checkpoint as the latest one. Restoring onto the
current mesh takes the abstract state with its target shardings: a different mesh shape works.

A checkpoint damaged after the fact (a lost metadata file, a truncated array file, a disk
fault) is not trusted: `restore_latest` verifies each step before reading it (`damage`), names
the step and the damage, sets it aside in `<directory>.damaged/` and falls back to the newest
intact one, saying so. It never falls back to step 0 by itself: if every checkpoint is damaged
it stops, naming them.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


# Files every complete step has (the JSON ones must parse); array data is checked by reading it.
REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "run/metadata")
JSON_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "run/metadata")


class DamagedCheckpoints(RuntimeError):
  """Every checkpoint of a run is damaged: nothing to resume from, and not silently step 0."""


class Checkpoints:

  def __init__(self, directory: str, *, every: int, keep: int, use_async: bool = True):
    self.every = every
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "data", "run"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=use_async,
                                             create=True))

  def latest(self) -> int | None:
    return self.manager.latest_step()

  def damage(self, step: int) -> str | None:
    """None if step `step` looks complete; else what is wrong with it (a missing or unreadable
    file), for this process (its share of the data iterator included)."""
    root = os.path.join(self.directory, str(step))
    if not os.path.isdir(root):
      return f"{root} is missing"
    for rel in REQUIRED:
      path = os.path.join(root, rel)
      if not os.path.isfile(path):
        return f"{rel} is missing"
      if os.path.getsize(path) == 0:
        return f"{rel} is empty"
    for rel in JSON_FILES:
      try:
        with open(os.path.join(root, rel)) as f:
          json.load(f)
      except (OSError, ValueError) as e:
        return f"{rel} is unreadable ({' '.join(str(e).split())})"
    mine = os.path.join(root, "data", f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    if not os.path.isfile(mine):
      found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "data", "process_*.json")))
      return f"data/{os.path.basename(mine)} is missing (found {found or 'none'})"
    return None

  def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any, dict] | None:
    """(step, state, saved run dict) of the newest intact checkpoint, with `data_iterator` set
    after it; None if there is none. Damaged newer steps are named, set aside and skipped
    (logged as errors)."""
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      why = self.damage(step)
      if why is None:
        try:
          state, saved = self.restore(step, abstract_state, data_iterator)
        except Exception as e:        # damage only reading finds (a truncated or corrupt array file)
          why = f"restoring it failed: {type(e).__name__}: {' '.join(str(e).split())[:400]}"
      if why is not None:
        logging.error("checkpoint step %d in %s is damaged: %s", step, self.directory, why)
        damaged.append((step, why))
        continue
      if damaged:
        self._set_aside([s for s, _ in damaged])
        logging.warning("resumed from step %d, the newest intact checkpoint; damaged and set aside in "
                        "%s.damaged: %s", step, self.directory, ", ".join(f"step {s} ({w})" for s, w in damaged))
      return step, state, saved
    if damaged:
      raise DamagedCheckpoints(
          f"no checkpoint in {self.directory} can be restored ({'; '.join(f'step {s}: {w}' for s, w in damaged)}); "
          "if the run's model or optimizer config changed since they were written, use the old one; if "
          "they are damaged, move them aside to start again from step 0")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged steps out of the manager's directory (kept for inspection, never deleted),
    so that the run's next saves are not shadowed by them."""
    if jax.process_index() == 0:
      for step in steps:
        target = os.path.join(self.directory + ".damaged", str(step))
        if os.path.exists(target):
          shutil.rmtree(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("hourjax_checkpoints_set_aside")
    self.manager.reload()

  def due(self, step: int, last: int) -> bool:
    return step == last or (self.every > 0 and step % self.every == 0)

  def save(self, step: int, state: Any, data_iterator: Any, run: dict) -> None:
    """Returns once the arrays are copied off the device (the write goes on in the background)."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
        run=ocp.args.JsonSave(run)), force=True)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> tuple[Any, dict]:
    """(state placed as `abstract_state`'s shardings say, the saved run dict); the iterator is
    set to continue with the batch after `step`."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator),
        run=ocp.args.JsonRestore()))
    return out["state"], out["run"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or abstract values) with target shardings."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
