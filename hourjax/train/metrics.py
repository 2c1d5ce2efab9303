"""Where training metrics go: JSON lines, TensorBoard event files and a console progress line
(process 0 only), plus counters of what the data pipeline skipped and truncated."""
from __future__ import annotations

import collections
import json
import os
import sys
import time
from typing import Any, Mapping


class MetricWriter:

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True):
    self.enabled, self.total = enabled, total_steps
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.path, "a")
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
    self._tty = sys.stderr.isatty()

  def write(self, step: int, scalars: Mapping[str, float], extra: Mapping[str, Any] | None = None) -> None:
    if not self.enabled:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2
    self._jsonl.write(json.dumps({"step": step, **scalars, **(extra or {})}) + "\n")
    self._jsonl.flush()
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values)))
    done = step / max(self.total, 1)
    bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
    line = (f"[{bar}] {step}/{self.total} loss {scalars.get('loss', float('nan')):.4f} "
            f"acc {scalars.get('accuracy', 0.0):.3f} {scalars.get('tokens_per_s', 0.0):,.0f} tok/s")
    if self._tty:
      print("\r" + line, end="", file=sys.stderr, flush=True)
    elif step % max(1, self.total // 10) == 0 or step == self.total:     # logs: one line per 10%
      print(line, file=sys.stderr, flush=True)

  def note(self, step: int, extra: Mapping[str, Any]) -> None:
    """A line without scalars (e.g. the last skips of a finite stream)."""
    if self.enabled:
      self._jsonl.write(json.dumps({"step": step, **extra}) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      if self._tty:
        print(file=sys.stderr)
      self._jsonl.close()
      self._tb.close()


class DataCounters:
  """Running totals of the pipeline's per-batch report (its `Meta`)."""

  def __init__(self):
    self.counts: collections.Counter = collections.Counter()

  def add(self, meta: Any) -> dict[str, Any]:
    """Adds one batch's report; returns what to log with the step (skipped ids included)."""
    self.counts[f"samples_{meta.stream}"] += len(meta.ids)
    for key in ("skipped", "truncated", "subsampled", "dropped"):
      self.counts[key] += len(getattr(meta, key))
    out: dict[str, Any] = {"stream": meta.stream}
    if meta.skipped:
      out["skipped"] = [list(s) for s in meta.skipped]
    for key in ("truncated", "subsampled", "dropped"):
      if getattr(meta, key):
        out[key] = list(getattr(meta, key))
    return out
