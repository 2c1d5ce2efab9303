"""launch.profile reports the compiled program's cost and memory and writes a profiler trace."""
import glob
import os

from configs.hour_llava import get_config
from hourjax.config import model_config
from hourjax.train import flops as flops_lib
from launch import profile


def test_profile_train_step_and_trace(tmp_path):
  run = get_config("tiny,stage=3")
  r = profile.profile(run, "train", batch=2, frames=32, text=64, steps=2, warmup=1, peak_flops=1e11,
                      trace=str(tmp_path), ops=5)
  cfg = model_config(run.model)
  # The compiled FLOPs are of the order of the analytic count (which omits softmax, norms, ...).
  from hourjax.models.forgetting import video_layout
  lay = video_layout([32, 32], cfg.forgetting)
  analytic = flops_lib.hour_llava_step(cfg, 2, 64, 32, lay.memory_frames.shape[1],
                                       lay.retained_frames.shape[1], pixels=False)["total"]
  assert 0.5 < r["flops"] / analytic < 3, (r["flops"], analytic)
  import jax
  assert r["median_step_s"] > 0 and abs(r["mfu"] - r["flops_per_s"] / (1e11 * jax.device_count())) < 1e-12
  assert r["memory"]["temp_size_in_bytes"] > 0
  assert glob.glob(os.path.join(str(tmp_path), "plugins", "profile", "*", "*.xplane.pb"))
  # --ops: the traced step by kind of instruction, then its 5 slowest instructions
  table = r["ops_table"].splitlines()
  assert table[2].startswith("| matmul |") and any(line.startswith("| idle") for line in table)
  slowest = table[table.index("") + 3:]
  assert len(slowest) == 5 and all(line.count("|") == 7 for line in slowest)


def test_step_flops_are_their_components_summed_for_every_batch_kind():
  """`Task.flops` (the loop's MFU, the AOT plans): the total is the sum of the parts, for Hour-LLaVA
  video and anyres image batches and ProLongVid's."""
  from configs import prolongvid
  from hourjax.synthetic.batches import abstract_batch
  from hourjax.train import optimizer as opt_lib
  from hourjax.train.program import Task
  hl, plv = model_config(get_config("tiny").model), model_config(prolongvid.get_config("tiny,stage=1").model)
  opt = opt_lib.OptimizerConfig(lr={"vision": 1e-4, "projector": 1e-4, "memaug": 1e-4, "llm": 1e-4})
  for task, batch in [(Task("hour_llava", hl), abstract_batch(hl, [32, 20], 64)),
                      (Task("hour_llava", hl), abstract_batch(hl, [], 64, image_sizes=[(330, 250)] * 2)),
                      (Task("prolongvid", plv), abstract_batch(plv, [8, 8], 64)),
                      (Task("prolongvid", plv), abstract_batch(plv, [], 64, image_sizes=[(330, 250)] * 2))]:
    f = task.flops(batch, opt)
    parts = sum(v for k, v in f.items() if k != "total")
    assert f["total"] > 0 and abs(f["total"] / parts - 1) < 1e-12, (task.name, f)
