"""Training checkpoints: the train state (sharded arrays), the Grain iterator state and the run's
config and progress, saved together by one Orbax CheckpointManager.

Orbax writes each step into a temporary directory and renames it when complete, so a crash
(even SIGKILL mid-save) leaves the previous checkpoint as the latest one. Restoring onto the
current mesh takes the abstract state with its target shardings: a different mesh shape works.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, directory: str, *, every: int, keep: int, use_async: bool = True):
    self.every = every
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "data", "run"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=use_async,
                                             create=True))

  def latest(self) -> int | None:
    return self.manager.latest_step()

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
