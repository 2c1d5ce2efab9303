"""One validation pass over a whole run config, before anything is built or read.

    from hourjax.train.validate import validate
    validate(run)             # ConfigError: "train.optimizer.lr.llm=-1e-05: expected a number >= 0"

Every problem is named by its field, its value and what is allowed; all of them are reported at
once (one line, `;`-separated), so that a run fails at start-up, not after an hour of compiling.
Checks: types, ranges (rates >= 0, steps >= 0, sizes > 0, checkpoint intervals), choices, and the
cross-field rules (mesh vs devices vs batch, buckets vs the model and the text length, ring
attention's heads vs the tensor axis). `devices=None` checks the mesh against this machine; the ahead-of-time
planner passes the target's device count.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import ml_collections

from hourjax.data import samples, text, video
from hourjax.models import anyres, build, prolongvid
from hourjax.models.layers import INITS
from hourjax.ops.attention import SEQUENCE_PARALLEL
from hourjax.parallel import mesh as mesh_lib


class ConfigError(ValueError):
  """A run config that cannot work; the message names each bad field."""


_MISSING = object()
INT, FLOAT = "an integer", "a number"

# (field, type, predicate, what is allowed); a field the config does not have is not checked
# (the presets differ: packed-text runs have no data.read).
RANGES: tuple[tuple[str, str, Callable[[Any], bool] | None, str], ...] = (
    ("train.steps", INT, lambda v: v >= 0, ">= 0 (0: one epoch)"),
    ("train.seed", INT, None, ""),
    ("train.checkpoint_every", INT, lambda v: v >= 0, ">= 0 (0: only at the end)"),
    ("train.checkpoint_keep", INT, lambda v: v >= 1, ">= 1"),
    ("train.stop_after", INT, lambda v: v >= 0, ">= 0 (0: never)"),
    ("train.peak_flops", FLOAT, lambda v: v >= 0, ">= 0 (0: MFU not logged)"),
    ("train.optimizer.warmup_ratio", FLOAT, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("train.optimizer.b1", FLOAT, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.optimizer.b2", FLOAT, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.optimizer.eps", FLOAT, lambda v: v > 0, "> 0"),
    ("train.optimizer.weight_decay", FLOAT, lambda v: v >= 0, ">= 0"),
    ("train.optimizer.clip_norm", FLOAT, lambda v: v >= 0, ">= 0 (0: no clipping)"),
    ("train.optimizer.accumulate", INT, lambda v: v >= 1, ">= 1"),
    ("data.batch_size", INT, lambda v: v > 0, "> 0"),
    ("data.seed", INT, None, ""),
    ("data.epochs", INT, lambda v: v >= 0, ">= 0 (0: repeat forever)"),
    ("data.workers", INT, lambda v: v >= 0, ">= 0 (0: decode in this process)"),
    ("data.worker_buffer", INT, lambda v: v >= 1, ">= 1"),
    ("data.threads", INT, lambda v: v >= 1, ">= 1"),
    ("data.read_ahead", INT, lambda v: v >= 0, ">= 0 (0: two batches)"),
    ("data.seq_len", INT, lambda v: v >= 2, ">= 2"),
    ("data.read.image_size", INT, lambda v: v > 0, "> 0"),
    ("data.read.min_frames", INT, lambda v: v >= 1, ">= 1"),
    ("data.read.max_text_len", INT, lambda v: v > 0, "> 0"),
    ("data.read.max_frames", INT, lambda v: v >= 0, ">= 0 (0: the largest frame bucket)"),
    ("model.max_length", INT, lambda v: v >= 1, ">= 1"),
    ("model.vision_grad_frames", INT, lambda v: v >= 0, ">= 0"),
    ("model.pool_size", INT, lambda v: v >= 1, ">= 1"),
    ("model.max_crops", INT, lambda v: v >= 1, ">= 1"),
    ("data.upsample_long.factor", INT, lambda v: v >= 1, ">= 1 (1: no upsampling)"),
    ("data.upsample_long.long_bytes", INT, lambda v: v >= 0, ">= 0"),
) + tuple((f"model.{family}.{name}", INT, lambda v: v >= 1, ">= 1")
          for family in ("vision", "llm") for name in ("hidden_size", "intermediate_size", "num_layers",
                                                       "num_heads", "image_size", "patch_size", "vocab_size",
                                                       "num_kv_heads"))

CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train.optimizer.schedule", ("cosine", "constant")),
    ("data.read.resample", tuple(video.RESAMPLE)),
    ("data.read.too_long", ("subsample", "skip")),
    ("data.read.images", samples.IMAGES),
    ("model.kind", build.VISUAL_KINDS),
    ("data.packing", text.PACKING),
    ("model.newline", prolongvid.NEWLINES),
    ("model.unpad", anyres.UNPAD),
    *((f"model.{field}", INITS) for field in ("vision.init", "llm.init", "memaug.init", "projector_init")),
)


def validate(run: ml_collections.ConfigDict, *, devices: int | None = None, processes: int | None = None) -> None:
  """Raises ConfigError naming every bad field of `run`; returns None when it can run."""
  raise_problems(list(problems_of(run, devices=devices, processes=processes)))


def raise_problems(problems: list[str]) -> None:
  """One ConfigError listing every problem (none: returns)."""
  if problems:
    head = "bad run config: " if len(problems) == 1 else f"bad run config ({len(problems)} problems): "
    raise ConfigError(head + "; ".join(problems))


def problems_of(run: ml_collections.ConfigDict, *, devices: int | None = None,
                processes: int | None = None) -> Iterator[str]:
  """Each problem of `run` as `field=value: expected ...`."""
  for field, kind, ok, allowed in RANGES:
    value = _get(run, field)
    if value is _MISSING:
      continue
    if not _is(value, kind):
      yield f"{field}={value!r}: expected {kind}{' ' + allowed if allowed else ''}"
    elif ok is not None and not ok(value):
      yield f"{field}={value!r}: expected {kind} {allowed}"
  for field, allowed in CHOICES:
    value = _get(run, field)
    if value is not _MISSING and value not in allowed:
      yield f"{field}={value!r}: expected one of {', '.join(allowed)}"
  yield from _learning_rates(run)
  yield from _dtype_and_frames(run)
  yield from _buckets(run)
  yield from _model(run)
  yield from _intervals(run)
  yield from _mesh(run, devices, processes)


def _get(run: Any, field: str) -> Any:
  node = run
  for part in field.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return _MISSING
    node = node[part]
  return node


def _is(value: Any, kind: str) -> bool:
  if isinstance(value, bool):
    return False
  if kind == INT:
    return isinstance(value, int)
  return isinstance(value, (int, float)) and math.isfinite(value)


def _learning_rates(run: Any) -> Iterator[str]:
  from hourjax.train.optimizer import GROUPS
  lr = _get(run, "train.optimizer.lr")
  if lr is _MISSING:
    return
  for group, value in dict(lr).items():
    if group not in GROUPS:
      yield f"train.optimizer.lr.{group}: not a parameter group; expected {', '.join(GROUPS)}"
    elif not _is(value, FLOAT) or value < 0:
      yield f"train.optimizer.lr.{group}={value!r}: expected a number >= 0 (0: frozen)"
  values = [v for v in dict(lr).values() if _is(v, FLOAT)]
  if values and not any(v > 0 for v in values):
    yield "train.optimizer.lr: every group is frozen (all rates are 0); give the trained groups a rate > 0"


def _dtype_and_frames(run: Any) -> Iterator[str]:
  from hourjax.train.program import DTYPES
  dtype = _get(run, "train.dtype")
  if dtype is not _MISSING and dtype not in DTYPES:
    yield f"train.dtype={dtype!r}: expected one of {', '.join(sorted(DTYPES))}"
  frames = _get(run, "data.read.frames")
  if frames is not _MISSING and not (frames == "official" or (
      isinstance(frames, str) and frames.startswith("fixed:") and frames[6:].isdigit() and int(frames[6:]) > 0)):
    yield f"data.read.frames={frames!r}: expected 'official' or 'fixed:N' (N > 0)"


def _edges(run: Any, field: str) -> tuple[int, ...] | None:
  """A bucket's edges, or None (after the caller reports them) when they are not usable."""
  edges = _get(run, field)
  if edges is _MISSING:
    return None
  edges = tuple(edges) if isinstance(edges, (tuple, list)) else edges
  if (not isinstance(edges, tuple) or not edges or not all(_is(e, INT) and e >= 1 for e in edges)
      or list(edges) != sorted(set(edges))):
    return None
  return edges


def _buckets(run: Any) -> Iterator[str]:
  for field in ("data.buckets.frames", "data.buckets.text"):
    if _get(run, field) is not _MISSING and _edges(run, field) is None:
      yield f"{field}={_get(run, field)!r}: expected increasing positive integers"
  text = _edges(run, "data.buckets.text")
  max_text = _get(run, "data.read.max_text_len")
  if text and _is(max_text, INT) and max_text > text[-1]:
    yield (f"data.read.max_text_len={max_text}: longer than the largest text bucket "
           f"(data.buckets.text ends at {text[-1]}); a truncated sample would not fit a batch")
  frames = _edges(run, "data.buckets.frames")
  fixed = _get(run, "data.read.frames")
  if frames and isinstance(fixed, str) and fixed.startswith("fixed:") and fixed[6:].isdigit() \
      and int(fixed[6:]) > frames[-1]:
    yield f"data.read.frames={fixed!r}: more frames than the largest frame bucket ({frames[-1]})"
  size, vision = _get(run, "data.read.image_size"), _get(run, "model.vision.image_size")
  if size is not _MISSING and vision is not _MISSING and size != vision:
    yield f"data.read.image_size={size}: must equal model.vision.image_size={vision}"


def _model(run: Any) -> Iterator[str]:
  images, kind = _get(run, "data.read.images"), _get(run, "model.kind")
  if images == "resize" and kind == "prolongvid":
    yield "data.read.images='resize': ProLongVid reads anyres crops (data.read.images='anyres')"
  for family in ("vision", "llm"):
    heads, kv, width = (_get(run, f"model.{family}.{k}") for k in ("num_heads", "num_kv_heads", "hidden_size"))
    if _is(heads, INT) and _is(width, INT) and heads >= 1 and width % heads:
      yield f"model.{family}.hidden_size={width}: not divisible by num_heads={heads}"
    if _is(heads, INT) and _is(kv, INT) and kv >= 1 and heads % kv:
      yield f"model.{family}.num_heads={heads}: not divisible by num_kv_heads={kv}"


def _intervals(run: Any) -> Iterator[str]:
  for name, ev in dict(_get(run, "evals") if _get(run, "evals") is not _MISSING else {}).items():
    every = ev.get("every", None) if hasattr(ev, "get") else None
    if not _is(every, INT) or every <= 0:
      yield f"evals.{name}.every={every!r}: expected an integer > 0 (the steps between evaluations)"
  if _get(run, "train.decoder_only") is True:
    schedule = _get(run, "train.context_schedule")
    for i, entry in enumerate(() if schedule is _MISSING or not schedule else schedule):
      entry = tuple(entry) if isinstance(entry, (tuple, list)) else ()
      if len(entry) != 2 or not all(_is(x, INT) for x in entry) or entry[0] <= 0 or entry[1] < 2:
        yield f"train.context_schedule[{i}]={entry!r}: expected (steps > 0, length >= 2)"
    if _get(run, "train.steps") == 0:
      yield "train.steps=0: a decoder-only run needs steps > 0 (packed text repeats forever)"


def _mesh(run: Any, devices: int | None, processes: int | None) -> Iterator[str]:
  sizes = _get(run, "mesh")
  if sizes is _MISSING:
    return
  sizes = dict(sizes)
  if not all(_is(v, INT) for v in sizes.values()):
    yield f"mesh={sizes}: expected integer axis sizes (-1: the remaining devices)"
    return
  if devices is None or processes is None:
    import jax
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
  try:
    shape = mesh_lib.mesh_shape(sizes, devices)
  except ValueError as e:
    msg, prefix = str(e), f"mesh {sizes}"
    msg = msg[len(prefix):].lstrip(": ") if msg.startswith(prefix) else msg
    yield f"mesh={sizes}: {msg}" + ("" if "devices" in msg else f" ({devices} devices here)")
    return
  shards = mesh_lib.batch_shards(mesh_lib.abstract_mesh(shape))
  batch, k = _get(run, "data.batch_size"), _get(run, "train.optimizer.accumulate")
  if _is(batch, INT) and batch > 0:
    if batch % shards or batch % processes:
      yield (f"data.batch_size={batch}: not divisible by the mesh's {shards} batch shards "
             f"(mesh {shape}) and {processes} processes")
    elif _is(k, INT) and k >= 1 and batch % (k * shards):
      yield (f"train.optimizer.accumulate={k}: data.batch_size={batch} must split into {k} "
             f"micro-batches that each divide by the {shards} batch shards")
  tensor = shape.get("tensor", 1)
  heads, kv = _get(run, "model.llm.num_heads"), _get(run, "model.llm.num_kv_heads")
  attention, seq = _get(run, "model.llm.attention"), shape.get("sequence", 1)
  if (attention in SEQUENCE_PARALLEL and tensor > 1 and _is(heads, INT) and _is(kv, INT)
      and (heads % tensor or kv % tensor)):
    yield (f"mesh.tensor={tensor}: {attention} attention splits heads over it, but the LLM has "
           f"{heads} query and {kv} key/value heads")
  elif attention == "ulysses" and _is(kv, INT) and seq > 1 and (kv // max(tensor, 1)) % seq:
    yield (f"mesh.sequence={seq}: Ulysses splits the {kv // max(tensor, 1)} key/value heads per "
           "device over it; use model.llm.attention=hybrid (Ulysses within groups, a ring across)")
