"""The ahead-of-time command compiles the real training step with libtpu's compiler for a TPU
topology on this CPU host and reports memory that accounts for the sharded state."""
import json
import pathlib


from hourjax.config import model_config
from hourjax.convert.layout import with_scan
from hourjax.models import build
from launch import aot_compile
from conftest import tiny_model

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_tiny_stage3_step_compiles_for_v5e(tmp_path):
  out = tmp_path / "report.json"
  aot_compile.main(["--config", f"{CONFIGS}/hour_llava.py:tiny,stage=3", "--topology", "v5e:2x2",
                    "--mesh", "data=2,fsdp=2", "--batch", "4", "--frames", "32", "--retained", "8",
                    "--text", "64", "--json", str(out)])
  r = json.loads(out.read_text())
  assert r["chips"] == 4 and r["fits"] and r["scan_layers"]
  cfg = with_scan(tiny_model(), True)
  n = build.count_params(build.abstract_params("hour_llava", cfg))
  trainable = n - build.count_params(build.abstract_params("hour_llava", cfg)["vision"])
  # f32 params + two Adam moments of the trainable ones, sharded 2 ways by fsdp (at most).
  state_bytes = 4 * n + 8 * trainable
  assert r["per_device_gib"]["arguments"] * 2**30 >= state_bytes / 2 * 0.95
  assert r["per_device_gib"]["aliased"] > 0          # the state is donated
  assert r["compiled_tflops_scanned_body_once"] > 0


def test_context_extension_stage_compiles_from_its_config(tmp_path):
  """The exact stage config (decoder only, theta 1e9, its optimizer and sequence length) with
  ring attention over a 4-chip 'sequence' axis."""
  out = tmp_path / "ctx.json"
  aot_compile.main(["--config", f"{CONFIGS}/prolongvid.py:tiny,stage=context_extension", "--topology", "v5e:2x2",
                    "--mesh", "data=1,fsdp=1,tensor=1,sequence=4", "--set", "model.llm.attention=ring",
                    "--json", str(out)])
  r = json.loads(out.read_text())
  assert r["fits"] and r["context"] == 512 and r["batch"] == 4 and r["mesh"]["sequence"] == 4
  assert r["optimizer"]["llm"] > 0 and r["optimizer"]["memaug"] == 0
  from configs.prolongvid import get_config as plv
  llm = with_scan(model_config(plv("tiny,stage=context_extension").model), True).llm
  assert llm.rope_theta == 1e9
  n = build.count_params(build.abstract_params("qwen2", llm))
  # f32 params + 2 Adam moments, split at most 4 ways (weights also shard over 'sequence': ZeRO-3).
  assert r["per_device_gib"]["arguments"] * 2**30 >= 12 * n / 4 * 0.95
