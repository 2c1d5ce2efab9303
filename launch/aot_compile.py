"""Compile the real training step for a TPU topology on this CPU-only host, and say if it fits.

  # Hour-LLaVA 7B stage 3: one-hour video (3,600 memory frames, 512 retained), cached features
  python -m launch.aot_compile --config configs/hour_llava.py:7b,stage=3 --topology v5p:4x4x4 \\
      --mesh data=1,fsdp=16,tensor=1,sequence=4 --batch 16 --frames 3600 --retained 512 --text 1024 \\
      --set model.llm.attention=ring model.memaug.attention=ring
  # ProLongVid's context-extension stage as configured: the decoder alone, 256K-token packed
  # sequences, RoPE theta 1e9, ring attention, the stage's optimizer (context, batch and mesh
  # default to the config's)
  python -m launch.aot_compile --config configs/prolongvid.py:7b,stage=context_extension \\
      --topology v5p:4x4x4 --mesh data=1,fsdp=4,tensor=1,sequence=16 --batch 4
  # ProLongVid's own model: video stage 3 (192 frames, 29,952 visual tokens) and an image stage
  # (a 6x6-crop anyres image: --image HxW)
  python -m launch.aot_compile --config configs/prolongvid.py:7b,stage=3 --topology v5p:4x4x4 \
      --mesh data=1,fsdp=16,tensor=1,sequence=4 --batch 16 --frames 192 --text 1024 --set model.llm.attention=ring
  python -m launch.aot_compile --config configs/prolongvid.py:7b,stage=image_sft --topology v5p:4x4x4 \
      --mesh data=1,fsdp=64,tensor=1,sequence=1 --batch 64 --image 2304x2304 --text 1024

libtpu's compiler runs here and reports per-device HBM (arguments, temporaries, outputs),
compiled FLOPs, and fit against the chip's HBM. Layers are scanned (`--unrolled` to unroll)
and rematerialised with `--remat` (default full). Compiled FLOPs: XLA's cost analysis counts a
loop body once, so the report also counts the compiled program's matmuls (dots and the
convolutions the TPU compiler writes them as) with every loop's trip count applied
(`hlo_cost.matmul_flops`; Pallas kernels such as splash stay invisible; see docs/scaling.md).
`--flops` adds the HBM bytes, from 1- and 2-layer unrolled variants of each layer stack
extrapolated to the real depth. Topology names are libtpu's:
v5p:2x2x1, v5p:4x4x4, v5e:4x4, v6e:4x4, ...

It also reads the collectives of the compiled program (`hourjax/train/hlo_cost.py`: bytes per
device, loop trip counts applied) and estimates the step time and MFU from three rates: the
executed FLOPs at peak, HBM bytes at the HBM bandwidth (with `--flops`), collective bytes at one
torus dimension's interconnect bandwidth; bounds for no overlap and full overlap of the
communication with compute. Compare context-parallel variants with
`--set model.llm.attention=ring|allgather|ulysses|hybrid`.
"""
from __future__ import annotations

import os
import sys

# Compile for TPU from a CPU host: the CPU is the runtime platform, libtpu only the compiler.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hourjax.config import load, model_config  # noqa: E402
from hourjax.convert.layout import with_scan  # noqa: E402
from hourjax.data.batch import PackedBatch  # noqa: E402
from hourjax.parallel import mesh as mesh_lib  # noqa: E402
from hourjax.synthetic.batches import abstract_batch  # noqa: E402
from hourjax.train import hlo_cost  # noqa: E402
from hourjax.train import program as program_lib  # noqa: E402
from hourjax.train.validate import validate  # noqa: E402

GiB = 2 ** 30
# Per chip (Google Cloud TPU documentation): peak dense bf16 FLOP/s, HBM bytes, HBM bytes/s, and
# the interconnect bandwidth a collective over one mesh axis gets: one torus dimension, both
# directions (v4 / v5p: 6 links per chip in a 3-D torus, 4800 Gbit/s in all on v5p; v5e / v6e:
# 4 links in a 2-D torus). An assumption, stated in docs/scaling.md.
CHIPS = {"v4": (275e12, 32 * GiB, 1228e9, 2400e9 / 8 / 3),
         "v5e": (197e12, 16 * GiB, 819e9, 1600e9 / 8 / 2),
         "v5litepod": (197e12, 16 * GiB, 819e9, 1600e9 / 8 / 2),
         "v5p": (459e12, 95 * GiB, 2765e9, 4800e9 / 8 / 3),
         "v6e": (918e12, 32 * GiB, 1640e9, 3584e9 / 8 / 2)}
# Executed / model FLOPs of the dense part: full remat runs the forward twice (fwd + bwd = 3).
REMAT_FLOPS = {"full": 4 / 3}


def parse_mesh(text: str) -> dict[str, int]:
  try:
    return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}
  except ValueError:
    raise SystemExit(f"--mesh {text!r}: expected e.g. data=1,fsdp=-1,tensor=1,sequence=4") from None


def tpu_devices(topology: str) -> list:
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  except Exception as e:  # libtpu's errors are runtime errors of several kinds
    raise SystemExit(f"--topology {topology!r}: libtpu could not build it ({e}); "
                     "names look like v5p:4x4x4 or v5e:4x4, and need `pip install libtpu`") from None


def chip(topology: str) -> tuple[float, float, float, float]:
  gen = topology.split(":")[0].split("-")[0]
  if gen not in CHIPS:
    raise SystemExit(f"no peak FLOP/s / HBM entry for {gen!r}; known: {sorted(CHIPS)}")
  return CHIPS[gen]


def set_depths(cfg, depths: dict[str, int]):
  """The model config with layer counts replaced (for the FLOP extrapolation)."""
  cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, num_layers=depths["llm"]),
                            vision=dataclasses.replace(cfg.vision, num_layers=depths["vision"]))
  return dataclasses.replace(cfg, memaug=dataclasses.replace(cfg.memaug, depth=depths["memaug"])) \
      if hasattr(cfg, "memaug") else cfg


def depths_of(task: program_lib.Task) -> dict[str, int]:
  cfg = task.model
  if task.name == "decoder":
    return {"llm": cfg.llm.num_layers}
  out = {"llm": cfg.llm.num_layers, "vision": cfg.vision.num_layers}
  return {**out, "memaug": cfg.memaug.depth} if hasattr(cfg, "memaug") else out


def compile_step(task: program_lib.Task, batch, mesh, dtype, opt_cfg):
  """Lower and compile the run's train step (program.build's, for abstract params, state and
  batch on `mesh`)."""
  program = program_lib.Program(task, opt_cfg, mesh, steps=1000, dtype=dtype)
  try:
    return program.lower(batch).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return DoesNotFit(str(e).split("RESOURCE_EXHAUSTED:")[-1].strip().splitlines()[0])


@dataclasses.dataclass
class DoesNotFit:
  """The TPU compiler refused the program for lack of HBM (it stops before reporting sizes)."""
  reason: str


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="e.g. configs/hour_llava.py:7b")
  p.add_argument("--set", nargs="*", default=[], help="config overrides key=value (or --config.key=value)")
  p.add_argument("--topology", required=True, help="libtpu topology, e.g. v5p:4x4x4")
  p.add_argument("--mesh", help="axis sizes, e.g. data=1,fsdp=-1,tensor=1,sequence=1 (default: the config's)")
  p.add_argument("--batch", type=int, help="global batch, samples or sequences (default: the config's)")
  p.add_argument("--remat", default="full", help="remat policy for every layer stack")
  p.add_argument("--unrolled", action="store_true", help="do not scan the layers")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--decoder-only", action="store_true",
                 help="Qwen2 alone on packed text (implied by a config with train.decoder_only)")
  p.add_argument("--context", type=int, help="decoder-only sequence length (default: data.seq_len or 32768)")
  p.add_argument("--frames", type=int, default=3600, help="input frames (1 FPS) = memory frames")
  p.add_argument("--retained", type=int, default=512, help="retained (decayed-query) frames")
  p.add_argument("--text", type=int, default=1024, help="text tokens per sample")
  p.add_argument("--pixels", action="store_true", help="raw frames through SigLIP instead of cached features")
  p.add_argument("--image", help="image stages (ProLongVid's, Hour-LLaVA's stage 1): one anyres image of "
                 "HxW pixels per sample, "
                 "e.g. 2304x2304 (6x6 crops, the largest grid)")
  p.add_argument("--flops", action="store_true", help="also extrapolate compiled FLOPs over depth")
  p.add_argument("--json", help="write the report here too")
  p.add_argument("--hlo", help="write the compiled program's HLO text here (what the collective count reads)")
  from hourjax.config import split_overrides
  own, flags_ = split_overrides(sys.argv[1:] if argv is None else argv)
  a = p.parse_args(own)
  a.set = flags_ + a.set

  families = [k for k in ("vision", "llm", "memaug") if k in load(a.config, a.set).model]
  run = load(a.config, [f"model.{k}.remat={a.remat}" for k in families] + a.set)
  if a.decoder_only:
    run.train.decoder_only = True
  hl = with_scan(model_config(run.model), not a.unrolled)
  task = program_lib.Task(program_lib.task_of(run).name, hl)
  a.context = a.context or run.data.get("seq_len", 32768)
  a.batch = a.batch or run.data.batch_size
  mesh_sizes = parse_mesh(a.mesh) if a.mesh else dict(run.mesh)
  try:
    opt_cfg = program_lib.optimizer_config(run)      # the stage's optimizer, freezing included
  except ValueError as e:
    raise SystemExit(f"{a.config}: {e} (give a stage, e.g. {a.config.split(',')[0]},stage=3)") from None
  dtype = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
  devices = tpu_devices(a.topology)
  checked = run.copy_and_resolve_references()      # the whole config, against the target's chips
  checked.mesh, checked.data.batch_size = dict(mesh_sizes), a.batch
  validate(checked, devices=len(devices), processes=1)
  mesh = mesh_lib.make_mesh(mesh_sizes, devices)
  peak, hbm, hbm_bw, ici_bw = chip(a.topology)
  n_batch = mesh_lib.batch_shards(mesh)
  if a.batch % n_batch:
    raise SystemExit(f"--batch {a.batch} must divide by the {n_batch} batch shards of mesh {dict(mesh.shape)}")

  sizes = [tuple(int(x) for x in a.image.split("x"))] * a.batch if a.image else ()
  if task.name == "decoder":
    def make_batch(c):
      s = jax.ShapeDtypeStruct((a.batch, a.context), jnp.int32)
      return PackedBatch(s, s, s, s)
  else:
    def make_batch(c):
      frames = dict(memory_frames=a.frames, retained_frames=a.retained) if task.name == "hour_llava" else {}
      b = abstract_batch(c, [a.frames] * a.batch, a.text, pixels=a.pixels or bool(sizes), image_sizes=sizes,
                         **frames)
      key = "pixels" if a.pixels or sizes else "features"
      return b.replace(**{key: jax.ShapeDtypeStruct(getattr(b, key).shape, dtype)})
  analytic = task.flops(make_batch(hl), opt_cfg)

  t0 = time.perf_counter()
  compiled = compile_step(task, make_batch(hl), mesh, dtype, opt_cfg)
  seconds = time.perf_counter() - t0
  if isinstance(compiled, DoesNotFit):
    print(f"{a.config} {' '.join(a.set)}\n  topology {a.topology} ({len(devices)} chips), mesh "
          f"{dict(mesh.shape)}: DOES NOT FIT: {compiled.reason}")
    if a.json:
      with open(a.json, "w") as f:
        json.dump({"fits": False, "reason": compiled.reason, "mesh": dict(mesh.shape)}, f, indent=1)
    return 1
  mem = compiled.memory_analysis()
  used = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes \
      - mem.alias_size_in_bytes
  report = {
      "config": a.config, "overrides": a.set, "topology": a.topology, "chips": len(devices),
      "mesh": dict(mesh.shape), "batch": a.batch, **({"context": a.context} if task.name == "decoder" else {}),
      "optimizer": dict(opt_cfg.lr), "remat": a.remat, "scan_layers": not a.unrolled,
      "compile_seconds": round(seconds, 1),
      "per_device_gib": {"arguments": mem.argument_size_in_bytes / GiB, "temporaries": mem.temp_size_in_bytes / GiB,
                         "outputs": mem.output_size_in_bytes / GiB, "aliased": mem.alias_size_in_bytes / GiB,
                         "total": used / GiB, "hbm": hbm / GiB},
      "fits": used <= hbm,
      "analytic_tflops_per_step": {k: v / 1e12 for k, v in analytic.items()},
      "compiled_tflops_scanned_body_once": compiled.cost_analysis().get("flops", 0.0) * len(devices) / 1e12,
  }
  hbm_bytes = None
  if a.flops:
    flops, hbm_bytes = extrapolate_flops(task, make_batch, mesh, dtype, a.pixels, opt_cfg)
    report["compiled_tflops_extrapolated"] = flops * len(devices) / 1e12
  # Analytic, not compiled: the compiled count cannot see inside Pallas kernels (splash) and
  # includes rematerialisation, so compiled numbers are a cross-check, not the model FLOPs.
  report["step_seconds_at_peak"] = analytic["total"] / (peak * len(devices))
  hlo = compiled.as_text()
  if a.hlo:
    with open(a.hlo, "w") as f:
      f.write(hlo)
  module = hlo_cost.parse(hlo)        # the text is read once for both counts
  report["compiled_tflops_matmul"] = hlo_cost.matmul_flops(module)["total"] * len(devices) / 1e12
  comm = hlo_cost.collective_bytes(module)
  report["collective_gib_per_device"] = {k: comm[k] / GiB for k in (*hlo_cost.KINDS, "total")}
  report["estimate"] = estimate(analytic["total"], len(devices), a.remat, comm["total"], hbm_bytes,
                                peak, hbm_bw, ici_bw)
  print(format_report(report))
  if a.json:
    with open(a.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


def estimate(model_flops: float, chips: int, remat: str, collective_bytes: float,
             hbm_bytes: float | None, peak: float, hbm_bw: float, ici_bw: float) -> dict:
  """Step time from three rates: executed FLOPs at peak, HBM bytes (when measured) at the HBM
  bandwidth, and collective bytes per device at one torus dimension's bandwidth. Two bounds:
  nothing overlaps (their sum with compute = max(FLOPs, HBM)), and communication hides entirely
  behind compute (the max). MFU = model FLOPs / (chips x peak x step)."""
  compute = model_flops * REMAT_FLOPS.get(remat, 1.0) / (chips * peak)
  memory = hbm_bytes / hbm_bw if hbm_bytes is not None else 0.0
  comm = collective_bytes / ici_bw
  serial, overlapped = max(compute, memory) + comm, max(compute, memory, comm)
  mfu = lambda t: model_flops / (chips * peak * t)
  return {"compute_s": compute, "hbm_s": memory if hbm_bytes is not None else None,
          "collective_s": comm, "step_s_no_overlap": serial, "step_s_full_overlap": overlapped,
          "mfu_no_overlap": mfu(serial), "mfu_full_overlap": mfu(overlapped)}


def extrapolate_flops(task, make_batch, mesh, dtype, pixels, opt_cfg) -> tuple[float, float]:
  """Per-device FLOPs and HBM bytes accessed of the full-depth step from unrolled 1- and
  2-layer compiles per stack (loops inside a layer still count once)."""
  full = depths_of(task)
  ones = dict.fromkeys(full, 1)
  flat = with_scan(task.model, False)

  def cost(d):
    cfg = set_depths(flat, {**ones, **d})
    c = compile_step(dataclasses.replace(task, model=cfg), make_batch(cfg), mesh, dtype,
                     opt_cfg).cost_analysis()
    return np.array([c["flops"], c["bytes accessed"]])
  base = cost({})
  total = base
  for stack, depth in full.items():
    if task.name != "decoder" and stack == "vision" and not pixels:
      continue
    total = total + (depth - 1) * (cost({stack: 2}) - base)
  return float(total[0]), float(total[1])


def format_report(r: dict) -> str:
  g = r["per_device_gib"]
  lines = [
      f"{r['config']} {' '.join(r['overrides'])}",
      f"  topology {r['topology']} ({r['chips']} chips), mesh {r['mesh']}, global batch {r['batch']}, "
      f"remat {r['remat']}, scanned {r['scan_layers']}, compiled in {r['compile_seconds']} s",
      f"  per-device HBM: arguments {g['arguments']:.2f} GiB + temporaries {g['temporaries']:.2f} GiB + "
      f"outputs {g['outputs']:.2f} GiB - aliased {g['aliased']:.2f} GiB = {g['total']:.2f} GiB "
      f"of {g['hbm']:.0f} GiB -> {'FITS' if r['fits'] else 'DOES NOT FIT'}",
      "  analytic model TFLOPs/step: " + ", ".join(f"{k} {v:,.4g}" for k, v in r["analytic_tflops_per_step"].items()),
      f"  compiled TFLOPs/step (XLA, loop bodies once): {r['compiled_tflops_scanned_body_once']:,.4g}",
  ]
  if "compiled_tflops_matmul" in r:
    lines.append(f"  compiled matmul TFLOPs/step (loop trip counts applied, remat included, Pallas kernels not "
                 f"seen): {r['compiled_tflops_matmul']:,.4g}")
  if "compiled_tflops_extrapolated" in r:
    lines.append(f"  compiled TFLOPs/step (depth-extrapolated, incl. remat): {r['compiled_tflops_extrapolated']:,.4g}")
  lines.append(f"  step time at peak bf16: {r['step_seconds_at_peak']:.3g} s (analytic FLOPs / chips x peak)")
  if "collective_gib_per_device" in r:
    c, e = r["collective_gib_per_device"], r["estimate"]
    lines.append("  collectives per device and step (loop trip counts applied): "
                 + ", ".join(f"{k} {v:.3g} GiB" for k, v in c.items() if v))
    hbm = "not measured (--flops)" if e["hbm_s"] is None else f"{e['hbm_s']:.3g} s"
    lines.append(f"  estimate: compute {e['compute_s']:.3g} s, HBM {hbm}, collectives "
                 f"{e['collective_s']:.3g} s -> step {e['step_s_no_overlap']:.3g} s (no overlap, "
                 f"MFU {e['mfu_no_overlap']:.1%}) .. {e['step_s_full_overlap']:.3g} s (full overlap, "
                 f"MFU {e['mfu_full_overlap']:.1%})")
  return "\n".join(lines)


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
