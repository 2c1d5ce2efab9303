import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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

