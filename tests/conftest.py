import os
import pathlib

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# libtpu is installed for ahead-of-time TPU compilation; tests run on the CPU and must not
# take the TPU runtime's lock (several test processes may run at once).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# A user's own XLA_FLAGS are kept, and a device count already set (a test's own process that
# imports a test module) stays.
_OWN_XLA_FLAGS = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_backend_optimization")]
_DEVICES = int(next((f.split("=")[1] for f in _OWN_XLA_FLAGS if f.startswith("--xla_force_host_platform_device")), 8))
_OWN_XLA_FLAGS = " ".join(f for f in _OWN_XLA_FLAGS if not f.startswith("--xla_force_host_platform_device"))


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process (this one, and the training processes tests launch) with
  `devices` fake CPU devices. LLVM's optimisation of the generated code is off: most of the
  suite's time is compiling tiny programs that then run for milliseconds, and level 0 compiles
  them in about two thirds of the time. It changes no HLO pass and allows no fast-math, so what
  the tests assert (tolerances against references, bitwise resume) is unaffected."""
  return f"{_OWN_XLA_FLAGS} --xla_backend_optimization_level=0 --xla_force_host_platform_device_count={devices}".strip()


# Multi-device tests run on 8 fake CPU devices; the flags must precede the first `import jax`.
os.environ["XLA_FLAGS"] = xla_flags(_DEVICES)

# One persistent compilation cache for the session and the training processes tests launch: a
# program compiled once (the same tiny model in many tests, or a restarted run) is not compiled
# again. A fresh directory per session unless HOURJAX_TEST_CACHE names one to keep.
# The process that makes the directory (not a test worker, which inherits it) removes it at the end.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _OWN_CACHE = None if os.environ.get("HOURJAX_TEST_CACHE") else tempfile.mkdtemp(prefix="jaxcc_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ.get("HOURJAX_TEST_CACHE") or _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The test workers (launch/test.sh runs two) share it: a size limit makes JAX take a file lock
# around each read and write, so no worker reads an entry another is still writing.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(64 << 30))



def pytest_unconfigure(config):
  if _OWN_CACHE:
    import shutil
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture
def fixture_path():
  """Path to an official-code fixture; skips where ../shared is absent, fails under CI."""
  def get(name: str) -> str:
    path = FIXTURES / name
    if not path.exists():
      if os.environ.get("CI") == "true":
        pytest.fail(f"fixture {path} is missing under CI")
      pytest.skip(f"fixture {path} not present (clone without ../shared/fixtures)")
    return str(path)
  return get


def needs_torch():
  """torch, or skip the calling test module saying why: the parity tests need it, and the newest
  environment (Python 3.12, requirements/lock-py312.txt) has none (the index serves only CUDA
  builds of torch for it, several GB)."""
  import pytest
  return pytest.importorskip("torch", reason="torch is not installed here (the torch extra): the parity "
                             "and conversion tests compare against torch models")


def randomize_torch(model, seed: int = 0):
  """Every parameter random and non-zero, activations of order one: weights N(0, 1/fan_in),
  biases N(0, 0.1^2), norm scales 1 + N(0, 0.1^2)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        fan_in = p.shape[1] * (p[0, 0].numel() if p.ndim > 2 else 1)
        p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
      elif "norm" in name or "layernorm" in name:
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model.eval()



def _qwen_tokenizer(qwen25: bool) -> str:
  """The real Qwen2 (or Qwen2.5) tokenizer, built from the qwen-agent wheel on the package index
  (tools/qwen_tokenizer.py; cached under $HOURJAX_CACHE). Skips offline, fails under CI."""
  from tools import qwen_tokenizer
  try:
    return qwen_tokenizer.ensure(qwen25)
  except RuntimeError as e:
    if os.environ.get("CI") == "true":
      pytest.fail(f"the real Qwen tokenizer could not be built under CI: {e}")
    pytest.skip(f"the real Qwen tokenizer is not available here: {e}")


@pytest.fixture(scope="session")
def qwen2_tokenizer() -> str:
  return _qwen_tokenizer(False)


@pytest.fixture(scope="session")
def qwen25_tokenizer() -> str:
  return _qwen_tokenizer(True)


# The real vocabulary's size in the models that use it (Qwen2.5-3B's embedding; Qwen2-7B has 152064).
QWEN_VOCAB = 151936


def jit_apply(model, params, *args, **kwargs):
  """`model.apply({"params": params}, *args, **kwargs)` under jit: eager execution dispatches (and
  compiles) thousands of small ops one by one, which makes a tiny model's forward take seconds.
  String, number, callable and None keyword arguments (modality, method, mutable, a layer index)
  stay static; arrays and pytrees of them are traced."""
  import jax
  static = {k: v for k, v in kwargs.items() if v is None or isinstance(v, (str, bool, int, float)) or callable(v)}
  dynamic = {k: v for k, v in kwargs.items() if k not in static}
  return jax.jit(lambda p, a, k: model.apply({"params": p}, *a, **k, **static))(params, args, dynamic)


def tiny_model(**overrides):
  """configs/hour_llava.py:tiny's model config with every weight random and non-zero: MemAug at
  fan_in instead of the preset's residual_zero, whose zero output projections make every MemAug
  block its LayerNorms alone at init, so that an equivalence test (scan, sharding, caches, batching)
  would never exercise MemAug's attention to the memory. `overrides`: HourLlavaConfig fields."""
  import dataclasses
  from configs.hour_llava import get_config
  from hourjax.config import model_config
  cfg = model_config(get_config("tiny").model)
  return dataclasses.replace(cfg, memaug=dataclasses.replace(cfg.memaug, init="fan_in"), **overrides)
