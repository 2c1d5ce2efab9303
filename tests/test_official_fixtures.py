"""Parity with the official PyTorch code through its fixtures, via the user-facing verify tool."""
import pytest

from tools.convert_torch.verify import main, verify_fixture


@pytest.mark.parametrize("name", ["memaug_official_small.safetensors",
                                  "hourllava_official_e2e_small.safetensors"])
def test_fixture_parity(fixture_path, name, capsys):
  errors = verify_fixture(fixture_path(name))
  assert errors and max(errors.values()) < 1e-5, errors
  if "train.logits" in errors:   # every stage of the forward is pinned, in both modes
    assert {"debug.siglip_features", "debug.pooled_features", "debug.memory", "train.memaug_output",
            "infer.memaug_output", "train.loss", "infer.logits"} <= set(errors)


def test_verify_cli_exit_codes(fixture_path, capsys):
  path = fixture_path("memaug_official_small.safetensors")
  assert main(["--fixture", path]) == 0
  assert "PASS" in capsys.readouterr().out
  assert main(["--fixture", path, "--tol", "1e-9"]) == 1   # real errors are ~1e-6, not zero
