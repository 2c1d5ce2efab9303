"""One builder for the training program of every command: from a run config (or its parts), what
is trained (the task), the model, the optimizer with freezing inside it, state shardings, initial
parameters and the jitted step. `loop.train`, `launch.aot_compile`, `launch.profile` and the
ablation build their step here; none assembles one by hand.

    program = build(run)                                    # run: configs/hour_llava.py:7b,stage=3
    state = program.init_state(program.initial_params(run))
    state, metrics = program.step(state, batch, rng)        # batch: a typed batch on the mesh
    compiled = program.lower(abstract_batch).compile()      # ahead of time (launch.aot_compile)

Tasks: `hour_llava` and `prolongvid` (the whole model, `cfg.model.kind`, on video / image / text
batches) and `decoder` (the decoder alone on packed documents: ProLongVid's context extension). A task is chosen once,
here; the loop and the commands never ask which.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from hourjax.config import model_config, model_kind
from hourjax.convert.io import load_params, read_meta
from hourjax.data import pipeline, text
from hourjax.data.batch import Batch, VideoBatch
from hourjax.data.batching import BatchSpec
from hourjax.models import build as build_lib
from hourjax.models.anyres import ImageLayout
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.prolongvid import ProLongVidConfig
from hourjax.parallel import mesh as mesh_lib
from hourjax.train import flops as flops_lib
from hourjax.train import optimizer as opt_lib
from hourjax.train import step as step_lib
from hourjax.train.checkpoint import abstract_like

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


@dataclasses.dataclass(frozen=True)
class Task:
  """What a run trains: the model kind and config, its data, its throughput accounting."""
  name: str                       # "hour_llava" | "prolongvid" | "decoder"
  model: HourLlavaConfig | ProLongVidConfig     # the run's whole model config

  @property
  def kind(self) -> str:
    return "qwen2" if self.name == "decoder" else self.name

  @property
  def cfg(self) -> Any:
    """The config of what is trained (the LLM's alone for the decoder task)."""
    return self.model.llm if self.name == "decoder" else self.model

  @property
  def spec(self) -> BatchSpec | None:
    return None if self.name == "decoder" else BatchSpec.of(self.model)

  def data(self, data: Any, *, process_index: int = 0, process_count: int = 1) -> Any:
    """The run's (batch, meta) iterator for this process."""
    where = dict(process_index=process_index, process_count=process_count)
    if self.name == "decoder":
      return iter(text.from_config(data, **where))
    return iter(pipeline.from_config(data, self.spec, **where))

  def tokenizer_path(self, data: Any) -> str:
    return data.tokenizer if self.name == "decoder" else data.read.tokenizer

  def template_ids(self, tokenizer: Any) -> tuple[int, ...]:
    """The chat template's tokens, left out of answer-token accuracy (packed text has none)."""
    return () if self.name == "decoder" or tokenizer is None else tokenizer.template_ids()

  def flops(self, batch: Batch, opt_cfg: opt_lib.OptimizerConfig) -> dict[str, float]:
    """Analytic training FLOPs of one step on `batch` (or its shapes), by component and "total"
    (MFU, AOT plans)."""
    b, length = batch.input_ids.shape
    if not isinstance(batch, VideoBatch):
      return flops_lib.decoder_step(self.model.llm, b, length)
    c, layout = self.model, batch.layout
    kw = dict(pixels=batch.pixels is not None, vision_trainable="vision" in opt_cfg.trainable)
    if self.name == "prolongvid":
      visual = layout.valid.shape[1] if isinstance(layout, ImageLayout) else c.video_tokens(batch.frames)
      return flops_lib.prolongvid_step(c, b, length, batch.frames, visual, **kw)
    if isinstance(layout, ImageLayout):
      memory = layout.valid.shape[1]
      return flops_lib.hour_llava_image_step(c, b, length, batch.frames, memory, c.query_width(batch.frames, memory),
                                             **kw)
    return flops_lib.hour_llava_step(c, b, length, batch.frames, layout.memory_frames.shape[1],
                                     layout.retained_frames.shape[1], **kw)


def task_of(run: ml_collections.ConfigDict) -> Task:
  """The run's task, chosen once: `train.decoder_only` trains the decoder on packed text."""
  return Task("decoder" if run.train.get("decoder_only", False) else model_kind(run.model), model_config(run.model))


def optimizer_config(run: ml_collections.ConfigDict) -> opt_lib.OptimizerConfig:
  """The stage's optimizer (`train.optimizer`); a config without a stage freezes everything,
  which OptimizerConfig refuses, naming the field."""
  t = run.train.optimizer
  return opt_lib.OptimizerConfig(**{**t.to_dict(), "lr": dict(t.lr)})


@dataclasses.dataclass
class Program:
  """Everything a training step needs, for one task on one mesh."""
  task: Task
  opt_cfg: opt_lib.OptimizerConfig
  mesh: Any
  steps: int
  dtype: Any = jnp.float32
  template_ids: tuple[int, ...] = ()
  donate: bool = True

  def __post_init__(self):
    self.model = build_lib.build(self.task.kind, self.task.cfg, dtype=self.dtype)
    self.abstract_params = build_lib.abstract_params(self.task.kind, self.task.cfg)
    self.param_specs = mesh_lib.param_specs(build_lib.logical_specs(self.task.kind, self.task.cfg),
                                            self.abstract_params, self.mesh)
    self.optimizer = opt_lib.make_optimizer(self.opt_cfg, self.abstract_params, self.steps)
    self.schedules = opt_lib.schedules(self.opt_cfg, self.steps)      # for logging
    self.state_specs = step_lib.state_specs(self.optimizer, self.param_specs, self.abstract_params)
    self.state_shardings = mesh_lib.shardings(self.state_specs, self.mesh)

  def loss(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The task's loss, with frozen groups behind stop_gradient (no backward pass through them)."""
    return step_lib.loss_fn(self.model, opt_lib.stop_frozen(params, self.opt_cfg), batch, rng, self.template_ids)

  @functools.cached_property
  def eval_loss(self) -> Any:
    """(params, batch) -> (loss, aux), jitted once: held-out evaluation (`evaluate.evaluate`)."""
    return jax.jit(lambda p, b: step_lib.loss_fn(self.model, p, b, jax.random.key(0), self.template_ids))

  @functools.cached_property
  def step(self) -> Any:
    """(state, batch, rng) -> (state, metrics), jitted with the state's shardings (donated); jit
    compiles one program per batch kind and bucket shape."""
    fn = step_lib.make_train_step(self.loss, self.optimizer, self.opt_cfg.accumulate)
    return jax.jit(fn, in_shardings=(self.state_shardings, None, None),
                   out_shardings=(self.state_shardings, None), donate_argnums=0 if self.donate else ())

  def init_state(self, params: Any) -> step_lib.TrainState:
    return jax.jit(lambda p: step_lib.init_state(p, self.optimizer), out_shardings=self.state_shardings)(params)

  def abstract_state(self) -> step_lib.TrainState:
    """ShapeDtypeStructs of the state with its shardings (restores, ahead-of-time compiles)."""
    state = jax.eval_shape(lambda p: step_lib.init_state(p, self.optimizer), self.abstract_params)
    return abstract_like(state, self.state_shardings)

  def fresh_params(self, seed: int) -> Any:
    return build_lib.init_sharded(self.task.kind, self.task.cfg, self.mesh, jax.random.key(seed))

  def initial_params(self, run: ml_collections.ConfigDict) -> Any:
    """Fresh parameters (train.seed), or `train.init`'s. An Hour-LLaVA checkpoint initialises a
    decoder run with its LLM; `train.init_llm` (a decoder checkpoint, e.g. the context
    extension's params) then replaces an Hour-LLaVA run's LLM."""
    t = run.train
    target = abstract_like(self.abstract_params, self.state_shardings.params)
    if t.init:
      saved = read_meta(t.init)["kind"]
      if saved == self.task.kind:
        params = load_params(t.init, target)
      elif self.task.kind == "qwen2" and saved in build_lib.VISUAL_KINDS:
        params = load_params(t.init, {"llm": target, **_rest_of(t.init, "llm")})["llm"]
      else:
        raise ValueError(f"train.init={t.init!r} holds a {saved!r} model; this run trains {self.task.kind}")
    else:
      params = self.fresh_params(t.seed)
    if t.get("init_llm", ""):
      if self.task.kind not in build_lib.VISUAL_KINDS:
        raise ValueError("train.init_llm replaces a video model's decoder; use train.init here")
      meta = read_meta(t.init_llm)
      if meta["kind"] != "qwen2":
        raise ValueError(f"train.init_llm={t.init_llm!r} holds a {meta['kind']!r} model; expected qwen2")
      if meta["config"].get("rope_theta") != self.task.cfg.llm.rope_theta:
        logging.warning("train.init_llm was trained with rope_theta %s; this run uses %s",
                        meta["config"].get("rope_theta"), self.task.cfg.llm.rope_theta)
      params = {**params, "llm": load_params(t.init_llm, target["llm"])}
    return params

  def lower(self, batch: Batch) -> Any:
    """The step lowered for abstract `batch` (ShapeDtypeStructs), batch sharded over the mesh's
    batch axes: `.compile()` runs the target's compiler (libtpu on a CPU host for TPU plans)."""
    batch_sh = jax.tree.map(lambda _: NamedSharding(self.mesh, mesh_lib.batch_spec(self.mesh)), batch)
    batch = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), batch, batch_sh)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    fn = step_lib.make_train_step(self.loss, self.optimizer, self.opt_cfg.accumulate)
    replicated = NamedSharding(self.mesh, PartitionSpec())
    with mesh_lib.activate(self.mesh):
      jitted = jax.jit(fn, in_shardings=(self.state_shardings, batch_sh, replicated),
                       out_shardings=(self.state_shardings, replicated), donate_argnums=0)
      return jitted.lower(self.abstract_state(), batch, jax.ShapeDtypeStruct(rng.shape, rng.dtype))


def _rest_of(path: str, keep: str) -> dict:
  """Abstract leaves (restored on the host, then dropped) for a checkpoint's other subtrees."""
  meta = read_meta(path)
  full = build_lib.abstract_params(meta["kind"], build_lib.config_from_dict(meta["kind"], meta["config"]))
  return {k: v for k, v in full.items() if k != keep}


def build(run: ml_collections.ConfigDict, *, mesh: Any = None, steps: int | None = None,
          template_ids: tuple[int, ...] = (), task: Task | None = None) -> Program:
  """The run's program on `mesh` (default: the run's mesh over all devices) for `steps` updates
  (default: train.steps)."""
  task = task or task_of(run)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh(dict(run.mesh))
  return Program(task, optimizer_config(run), mesh, steps or run.train.steps, DTYPES[run.train.dtype],
                 template_ids)

