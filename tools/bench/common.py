"""Measurement helpers shared by the benchmarks (standard library and numpy only: the official
Hour-LLaVA side runs them in its own environment, without jax or hourjax)."""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Callable

# glibc settings for processes whose peak memory is compared: allocations of 64 KiB and more are
# mapped and returned on free, so freed memory does not hide in the heap.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def median_time(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `repeats` calls of fn after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def torch_matmul_rate(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n x n float32 matmul in torch (best of `repeats`)."""
  import torch
  x = torch.randn(n, n)
  x @ x
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    x @ x
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(times)


def status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(f"no {field} in /proc/self/status")


def step_peak_bytes(run_step: Callable[[], object]) -> int:
  """Peak resident bytes of one call of run_step above the resident set before it (Linux)."""
  gc.collect()
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  with open("/proc/self/clear_refs", "w") as f:     # "5" resets VmHWM to the current VmRSS
    f.write("5")
  before = status_kib("VmRSS")
  run_step()
  return (status_kib("VmHWM") - before) * 1024
