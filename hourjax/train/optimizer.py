"""The optimizer of a stage: AdamW per module group with its own learning rate, frozen groups
with no optimizer state, warmup + cosine and global-norm clipping. (Gradient accumulation is
in the train step: `step.make_train_step(..., accumulate=k)`.)

Groups follow the official freezing code (spec §4.2): `vision` (SigLIP), `projector`, `memaug`
and `llm` (the decoder, its embeddings and head, and `image_newline`, as the official
`mm_language_model` part includes it). A group with learning rate 0 is frozen.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import optax

GROUPS = ("vision", "projector", "memaug", "llm")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  lr: Mapping[str, float]                  # peak learning rate per group; 0 or absent = frozen
  warmup_ratio: float = 0.03
  schedule: str = "cosine"                 # cosine | constant (after warmup)
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  clip_norm: float = 1.0                   # 0: no clipping
  accumulate: int = 1                      # micro-batches per step (step.make_train_step)

  def __post_init__(self):
    unknown = set(self.lr) - set(GROUPS)
    if unknown:
      raise ValueError(f"train.optimizer.lr has unknown groups {sorted(unknown)}; expected {GROUPS}")
    if not any(v > 0 for v in self.lr.values()):
      raise ValueError("train.optimizer.lr: every group is frozen (all learning rates are 0)")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"train.optimizer.schedule={self.schedule!r}: expected cosine or constant")
    if self.accumulate < 1:
      raise ValueError(f"train.optimizer.accumulate={self.accumulate} must be >= 1")

  @property
  def trainable(self) -> tuple[str, ...]:
    return tuple(g for g in GROUPS if self.lr.get(g, 0) > 0)


def group_of(top_level: str) -> str:
  """A parameter's group from its top-level module name (a bare decoder is all `llm`)."""
  return top_level if top_level in ("vision", "projector", "memaug") else "llm"


def labels(params: Mapping[str, Any], cfg: OptimizerConfig) -> dict:
  return {k: jax.tree.map(lambda _, g=group_of(k): g if g in cfg.trainable else "frozen", v)
          for k, v in params.items()}


def schedules(cfg: OptimizerConfig, steps: int) -> dict[str, Callable[[Any], Any]]:
  """Learning rate per trainable group, as a function of the update count."""
  warmup = int(round(cfg.warmup_ratio * steps))
  out = {}
  for g in cfg.trainable:
    peak = cfg.lr[g]
    if cfg.schedule == "cosine":
      out[g] = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), 0.0)
    else:
      out[g] = optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                    [warmup])
  return out


def make_optimizer(cfg: OptimizerConfig, params: Mapping[str, Any], steps: int) -> optax.GradientTransformation:
  """`steps` optimizer updates in the run (for the schedule)."""
  per_group = {g: optax.adamw(s, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay)
               for g, s in schedules(cfg, steps).items()}
  tx = optax.multi_transform({**per_group, "frozen": optax.set_to_zero()}, labels(params, cfg))
  if cfg.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
  return tx


def stop_frozen(params: Mapping[str, Any], cfg: OptimizerConfig) -> dict:
  """Frozen groups behind stop_gradient: XLA then drops their backward pass entirely (SigLIP
  sits at the input, so stage 3 never differentiates it)."""
  return {k: v if group_of(k) in cfg.trainable else jax.lax.stop_gradient(v) for k, v in params.items()}
