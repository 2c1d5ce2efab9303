"""Where a compiled program's time goes: a `jax.profiler` trace read per executed HLO
instruction, joined with the compiled HLO (`hlo_cost.executed`: each instruction's kind and
matmul FLOPs), so a profile answers "which part of the step is below the matmul rate, and by
how much" in a table rather than in a trace viewer.

XLA:CPU runs independent instructions of a program concurrently on its thread pool, so the
durations of the trace's events overlap and their sum exceeds the step. Each instant of
wall-clock time is therefore split evenly among the instructions running at that instant
(the innermost events only: a `while` or `conditional` event contains its body's events, and
where its body runs on other threads, the loop's own event counts only while nothing else
runs), and the shares add up to the time the device was busy. Time not covered by any instruction
(dispatch, waiting between steps) is reported as idle.

  from hourjax.train import op_profile
  wall = op_profile.traced(lambda: jax.block_until_ready(compiled(*args)), steps=3, trace_dir=d)
  print(op_profile.format_table(op_profile.breakdown(d, compiled.as_text(), steps=3, wall_s=wall)))

Tracing slows a program of many small instructions (each event is recorded), so the traced
step is measured separately from the untraced one; the shares are of the traced step.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import time
from typing import Callable

from hourjax.train import hlo_cost

KINDS = ("matmul", "elementwise/reduction", "data movement", "collective", "control")


@dataclasses.dataclass(frozen=True)
class Op:
  """One executed instruction's share of a step: seconds (wall clock, split with concurrent
  instructions), executions per step, matmul FLOPs per step, kind and JAX source name."""
  name: str
  seconds: float
  runs: float
  flops: float
  kind: str
  source: str


def traced(run_once: Callable[[], object], steps: int, trace_dir: str) -> float:
  """Runs `run_once` (it must block until its work is done) `steps` times under a
  jax.profiler trace written to trace_dir; returns the wall-clock seconds per traced step."""
  import jax
  with jax.profiler.trace(trace_dir):
    t = time.perf_counter()
    for _ in range(steps):
      run_once()
    wall = (time.perf_counter() - t) / steps
  return wall


def _trace_file(trace_dir: str) -> str:
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"{trace_dir}: no jax.profiler trace (*.xplane.pb) in it")
  return files[-1]


def _module_name(hlo: str) -> str:
  m = re.match(r"\s*HloModule\s+([\w.\-]+)", hlo)
  return m.group(1) if m else ""


def op_seconds(trace_dir: str, module: str = "", background: frozenset[str] = frozenset()
               ) -> tuple[dict[str, float], dict[str, int], float]:
  """({instruction: busy seconds}, {instruction: executions}, busy seconds in all) over the
  newest trace in trace_dir, for the events of HLO module `module` (all modules when empty).
  Instructions in `background` (loops waiting for their bodies) get time only when no other
  instruction runs."""
  from jax.profiler import ProfileData
  spans = []
  for plane in ProfileData.from_file(_trace_file(trace_dir)).planes:
    for line in plane.lines:
      events = []
      for e in line.events:
        stats = dict(e.stats)
        if "hlo_op" in stats and (not module or stats.get("hlo_module") == module):
          events.append((e.start_ns, e.end_ns, stats["hlo_op"]))
      events.sort(key=lambda x: (x[0], -x[1]))
      for i, (start, end, name) in enumerate(events):
        if i + 1 < len(events) and events[i + 1][0] < end:   # it contains the next event: not innermost
          continue
        spans.append((start, end, name))
  share, busy = split_wall(spans, background)
  return share, dict(collections.Counter(n for _, _, n in spans)), busy


def split_wall(spans: list[tuple[int, int, str]], background: frozenset[str] = frozenset()
               ) -> tuple[dict[str, float], float]:
  """Spans (start ns, end ns, name) -> ({name: seconds}, busy seconds): each instant's wall time
  is split evenly among the spans covering it (names in `background` only when no other span
  does), so the shares sum to the time covered by any span."""
  edges = sorted([(s, 1, n) for s, _, n in spans] + [(e, -1, n) for _, e, n in spans])
  share: collections.Counter = collections.Counter()
  active: collections.Counter = collections.Counter()
  busy, last = 0.0, None
  for t, delta, name in edges:
    working = {n: k for n, k in active.items() if n not in background} or active
    running = sum(working.values())
    if running and last is not None:
      for n, k in working.items():
        share[n] += (t - last) * k / running / 1e9
      busy += (t - last) / 1e9
    active[name] += delta
    if not active[name]:
      del active[name]
    last = t
  return dict(share), busy


def breakdown(trace_dir: str, hlo: str, steps: int, wall_s: float | None = None) -> dict:
  """Per-step time by kind and per instruction of the compiled program `hlo` (its text) traced
  for `steps` runs in trace_dir; wall_s (the measured step) adds the idle share."""
  executed = hlo_cost.executed(hlo)
  loops = frozenset(n for n, e in executed.items() if e.kind == "control")
  seconds, runs, busy = op_seconds(trace_dir, _module_name(hlo), loops)
  unknown = hlo_cost.Executed("elementwise/reduction", 0.0, "")
  ops = sorted((Op(n, s / steps, runs[n] / steps, e.flops * runs[n] / steps, e.kind, e.source)
                for n, s in seconds.items() for e in [executed.get(n, unknown)]), key=lambda o: -o.seconds)
  by_kind = {k: {"seconds": sum(o.seconds for o in ops if o.kind == k),
                 "flops": sum(o.flops for o in ops if o.kind == k)} for k in KINDS}
  out = {"ops": ops, "by_kind": by_kind, "busy_s": busy / steps, "steps": steps}
  if wall_s is not None:
    out["wall_s"] = wall_s
  return out


def format_table(b: dict, top: int = 15, peak_flops: float | None = None) -> str:
  """Markdown tables: time per kind (and the matmuls' FLOP/s, with their share of peak_flops),
  then the `top` instructions by time."""
  wall = b.get("wall_s") or b["busy_s"]
  rows = ["| kind | s / step | share of the step | GFLOP / step | GFLOP/s" + (" | of peak |" if peak_flops else " |"),
          "|---|---|---|---|---|" + ("---|" if peak_flops else "")]
  for k in KINDS:
    s, f = b["by_kind"][k]["seconds"], b["by_kind"][k]["flops"]
    if not s:
      continue
    rate = f"{f / s / 1e9:.0f}" if f else "-"
    peak = (f" {f / s / peak_flops:.0%} |" if f else " - |") if peak_flops else ""
    rows.append(f"| {k} | {s:.3f} | {s / wall:.0%} | {f / 1e9:.1f} | {rate} |{peak}")
  if "wall_s" in b:
    idle = max(0.0, b["wall_s"] - b["busy_s"])
    rows.append(f"| idle (no instruction running) | {idle:.3f} | {idle / wall:.0%} | - | - |"
                + (" - |" if peak_flops else ""))
  rows += ["", "| instruction | kind | s / step | runs / step | GFLOP/s | JAX source |", "|---|---|---|---|---|---|"]
  for o in b["ops"][:top]:
    rate = f"{o.flops / o.seconds / 1e9:.0f}" if o.flops and o.seconds else "-"
    rows.append(f"| {o.name} | {o.kind} | {o.seconds:.3f} | {o.runs:g} | {rate} | {o.source[-90:]} |")
  return "\n".join(rows)
