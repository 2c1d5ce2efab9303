"""A wheel from the package index, downloaded once (`pip download --no-deps`) into the cache
(`$HOURJAX_CACHE`, default `~/.cache/hourjax`): for test references that ship inside packages
(the Qwen2 vocabulary in qwen-agent, lmms-eval's own task code) and are read, never installed."""
from __future__ import annotations

import glob
import os
import subprocess
import sys


def cache_dir() -> str:
  return os.environ.get("HOURJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hourjax")


def fetch(spec: str, cache: str | None = None) -> str:
  """Path of the wheel of `spec` ("name==version"); RuntimeError if the index cannot give it."""
  cache = cache or cache_dir()
  os.makedirs(cache, exist_ok=True)
  name, version = spec.split("==")
  pattern = os.path.join(cache, f"{name.replace('-', '_')}-{version}-*.whl")
  found = glob.glob(pattern)
  if not found:
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                           "--disable-pip-version-check", spec, "-d", cache], capture_output=True, text=True)
    found = glob.glob(pattern)
    if done.returncode or not found:
      raise RuntimeError(f"pip download {spec} failed (the package index is needed once): "
                         f"{(done.stderr.strip().splitlines() or [done.returncode])[-1]}")
  return found[0]
