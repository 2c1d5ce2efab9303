"""Training: the optimizer's groups, freezing and schedules; the loop's exact resume after SIGKILL
and SIGTERM; start-up validation; a non-finite loss stops without touching the last checkpoint."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.hour_llava import get_config
from hourjax.config import load, model_config
from hourjax.synthetic.videos import write_dataset
from hourjax.models import build
from hourjax.train import optimizer as opt_lib
from hourjax.train import step as step_lib
from hourjax.train.loop import NonFiniteLoss, check_run, train
from hourjax.synthetic.tokenizer import save_tiny_tokenizer
from conftest import tiny_model, xla_flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CFG = tiny_model()
CONFIG = os.path.join(ROOT, "configs", "hour_llava.py") + ":tiny,stage=3"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth"))
  write_dataset(root, num_videos=6, seconds=(18, 30), fps=2, size=48, seed=2)
  save_tiny_tokenizer(os.path.join(root, "tokenizer"))
  return root


def _overrides(root, **kw):
  base = {"data.root": root, "data.read.tokenizer": os.path.join(root, "tokenizer"), "train.steps": 8,
          "train.checkpoint_every": 4}
  base.update(kw)
  return [f"{k}={v}" for k, v in base.items()]


def test_optimizer_groups_freezing_and_schedule():
  params = build.init_params("hour_llava", CFG, jax.random.key(0))
  cfg = opt_lib.OptimizerConfig(lr={"projector": 1e-3, "memaug": 2e-3, "llm": 5e-4}, warmup_ratio=0.1)
  tx = opt_lib.make_optimizer(cfg, params, steps=100)
  state = tx.init(params)
  # Frozen SigLIP has no optimizer state: the Adam moments cover exactly the trained groups.
  trained = sum(x.size for k, v in params.items() if k != "vision" for x in jax.tree.leaves(v))
  moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * trained
  s = opt_lib.schedules(cfg, 100)
  assert float(s["memaug"](0)) == 0 and abs(float(s["memaug"](10)) - 2e-3) < 1e-9
  assert abs(float(s["llm"](55)) - 5e-4 * 0.5 * (1 + np.cos(np.pi * 45 / 90))) < 1e-9
  # stop_frozen: no gradient reaches SigLIP; the update of a frozen group is zero.
  batch = {"input_ids": jnp.ones((1, 8), jnp.int32), "attention_mask": jnp.ones((1, 8), jnp.int32),
           "labels": jnp.ones((1, 8), jnp.int32)}
  from hourjax.synthetic.batches import synthetic_batch
  batch = synthetic_batch(CFG, jax.random.key(1), [6], 16, pixels=True)
  model = build.build("hour_llava", CFG)
  loss = lambda p: step_lib.loss_fn(model, opt_lib.stop_frozen(p, cfg), batch, jax.random.key(2))[0]
  grads = jax.jit(jax.grad(loss))(params)
  assert all(not np.any(g) for g in jax.tree.leaves(grads["vision"]))
  assert all(np.any(g) for g in jax.tree.leaves(grads["memaug"]))
  updates, _ = jax.jit(tx.update)(grads, state, params)     # eager, optax dispatches op by op (14 s)
  assert all(not np.any(u) for u in jax.tree.leaves(updates["vision"]))
  with pytest.raises(ValueError, match="unknown groups"):
    opt_lib.OptimizerConfig(lr={"decoder": 1e-4})


def test_stage_configs():
  c = get_config("7b,stage=2")
  assert dict(c.train.optimizer.lr) == {"vision": 5e-6, "projector": 1e-4, "memaug": 1e-4, "llm": 1e-5}
  assert dict(get_config("3b,stage=2,lr=single").train.optimizer.lr) == {k: 2e-5 for k in opt_lib.GROUPS}
  s3 = get_config("7b,stage=3")
  assert s3.train.optimizer.lr.vision == 0 and s3.data.batch_size == 256 and s3.data.read.time_instruction
  assert dict(get_config("7b,stage=1").train.optimizer.lr) == {"vision": 0, "projector": 0, "memaug": 1e-4, "llm": 0}
  for bad, field in (("7b,stage=4", "stage 4"), ("7b,lr=fast", "lr='fast'"), ("7b,epochs=1", "epochs")):
    with pytest.raises(ValueError, match=field):
      get_config(bad)


def test_startup_validation(synth, tmp_path):
  cases = [({"data.batch_size": 3, "mesh.data": 2, "mesh.fsdp": 1, "mesh.sequence": 4}, "data.batch_size"),
           ({"mesh.data": 16, "mesh.fsdp": 1}, "mesh="),
           # 8 batch shards on this session's 8 devices: a batch of 8 fits
           ({"train.init": str(tmp_path / "nowhere"), "data.batch_size": 8}, "train.init"),
           ({"train.dtype": "float16", "data.batch_size": 8}, "train.dtype")]
  for kw, field in cases:
    with pytest.raises((ValueError, FileNotFoundError), match=field):
      check_run(load(CONFIG, _overrides(synth, **kw)))
  with pytest.raises(ValueError, match="not a config field"):
    load(CONFIG, ["train.stepz=3"])


def _launch(workdir, overrides, devices=1, extra=()):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags(devices)
  return subprocess.Popen([sys.executable, "-m", "launch.train", "--config", "configs/hour_llava.py:tiny,stage=3",
                           "--workdir", str(workdir), *extra, *overrides], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
  """Loss per step; a step run twice (after a restart) must have given the same loss."""
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    r = json.loads(line)
    assert out.setdefault(r["step"], r["loss"]) == r["loss"], r
  return out


def _wait_for_step(proc, workdir, step, timeout=240):
  path, t0 = os.path.join(workdir, "metrics.jsonl"), time.time()
  while time.time() - t0 < timeout:
    if os.path.exists(path) and any(json.loads(l)["step"] >= step for l in open(path)):
      return
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.2)
  raise TimeoutError


def test_killed_and_preempted_runs_resume_bit_identically(synth, tmp_path):
  """One run preempted (SIGTERM: it saves and exits 0), resumed, killed (SIGKILL), restarted:
  its losses are those of an uninterrupted run, bit for bit."""
  ref = _launch(tmp_path / "ref", _overrides(synth))
  assert ref.wait(600) == 0, ref.stdout.read()
  expected = _losses(tmp_path / "ref")
  assert sorted(expected) == list(range(1, 9))

  run = tmp_path / "run"
  preempted = _launch(run, _overrides(synth))
  _wait_for_step(preempted, run, 3)
  preempted.send_signal(signal.SIGTERM)
  assert preempted.wait(300) == 0
  summary = json.load(open(run / "summary.json"))
  assert summary["preempted"] and summary["last_step"] < 7
  assert not os.path.exists(run / "params")
  resumed = _launch(run, _overrides(synth))
  _wait_for_step(resumed, run, summary["last_step"] + 2)
  resumed.send_signal(signal.SIGKILL)
  resumed.wait()
  again = _launch(run, _overrides(synth))
  assert again.wait(600) == 0, again.stdout.read()
  assert _losses(run) == expected
  assert os.path.exists(run / "params" / "hourjax.json")
  steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
  p = summary["last_step"]
  assert steps[:p + 1] == list(range(1, p + 2))          # resumed right after the preemption
  assert json.load(open(run / "summary.json"))["first_step"] > 1      # the restart did not start over


def test_nonfinite_loss_keeps_the_last_good_checkpoint(synth, tmp_path):
  run = load(CONFIG, _overrides(synth, **{"train.steps": 6, "mesh.fsdp": 4, "mesh.sequence": 2,
                                          "train.checkpoint_every": 1}))
  # The warmup starts at 0, so the first updates are small and checkpointed; then it diverges.
  run.train.optimizer.lr.llm, run.train.optimizer.warmup_ratio = 1e30, 0.5
  run.train.optimizer.clip_norm = 0.0
  with pytest.raises(NonFiniteLoss, match="diagnostics"):
    train(run, str(tmp_path))
  report = next(f for f in os.listdir(tmp_path) if f.startswith("nonfinite_step_"))
  bad_step = int(report.split("_")[-1].split(".")[0])
  info = json.load(open(tmp_path / report))
  assert bad_step >= 2 and info["last_checkpoint"] == bad_step - 1
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved and saved[-1] == bad_step - 1
  losses = _losses(tmp_path)
  assert all(np.isfinite(v) for s, v in losses.items() if s < bad_step)


def test_two_processes_equal_one(synth, tmp_path):
  """2 processes x 4 CPU devices (gloo collectives) train with the losses of 1 process x 8
  devices: each process reads half of every global batch. Uniform spatial forgetting, because
  random forgetting draws per batch row and the rows come in another order."""
  import socket
  over = _overrides(synth, **{"train.steps": 4, "data.batch_size": 8, "mesh.data": 2, "mesh.fsdp": -1,
                              "model.forgetting.spatial": "uniform"})
  single = _launch(tmp_path / "one", over, devices=8)
  assert single.wait(600) == 0, single.stdout.read()
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [_launch(tmp_path / "two", over, devices=4,
                   extra=["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                          "--cpu-collectives", "gloo"]) for i in range(2)]
  for p in procs:
    assert p.wait(600) == 0, p.stdout.read()
  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  for s in one:
    assert abs(one[s] - two[s]) / abs(one[s]) < 1e-5, (s, one[s], two[s])


def test_prolongvid_stages(synth, tmp_path):
  from configs import prolongvid
  from hourjax.data.sources import Source, epoch_records
  s2 = prolongvid.get_config("7b,stage=2,model=hour_llava")
  assert s2.model.llm.rope_theta == s2.model.memaug.rope_theta == 1e9
  assert s2.data.read.frames == "fixed:128" and s2.train.optimizer.lr.vision == 0
  assert (s2.data.sources[0]["min_seconds"], s2.data.sources[0]["max_seconds"]) == (120, 300)
  model_config(s2.model)
  own = model_config(prolongvid.get_config("7b,stage=2").model)      # ProLongVid's own model
  assert own.llm.rope_theta == 1e9 and own.tokens_per_frame() == 12 * 13 and not hasattr(own, "memaug")
  run = prolongvid.get_config("tiny,stage=1")
  kept = epoch_records([Source(**dict(s)) for s in run.data.sources], synth, 0)["video"]
  assert kept and all(r["duration"] < 30 for r in kept)
  for bad in ("7b,stage=5", "7b,stage=image_sft,model=hour_llava", "7b,model=memaug"):
    with pytest.raises(ValueError, match="stage"):
      prolongvid.get_config(bad)
  # The docstring's tables are the models' own layouts: ProLongVid's (4 columns), then Hour-LLaVA's (6).
  rows = [[int(x.replace(",", "")) if x.strip().replace(",", "").isdigit() else x.strip() for x in line.split("|")]
          for line in prolongvid.__doc__.splitlines() if "|" in line and line.split("|")[0].strip()[:1].isalnum()
          and "stage" not in line]
  own_rows = [r for r in rows if len(r) == 4]
  for stage, frames, per_frame, tokens in own_rows:
    arg = f"7b,stage={stage if stage != 'test' else 3}"
    assert prolongvid.visual_tokens(arg, frames if stage == "test" else None) == tokens == frames * per_frame
  assert [r[0] for r in own_rows] == [1, 2, 3, "test"] and own_rows[-1][1] == prolongvid.TEST_FRAMES
  for stage, *numbers in (r for r in rows if len(r) == 6):
    budget = prolongvid.token_budget(f"7b,stage={stage}")
    assert list(budget.values()) == numbers[:4] and numbers[4] == budget["input frames"] * 12 * 13
  assert len([r for r in rows if len(r) == 6]) == len(prolongvid.STAGES)


def test_resume_onto_another_mesh(synth, tmp_path):
  """A checkpoint written on a (fsdp 4, sequence 2) mesh restores onto (data 2, fsdp 2,
  sequence 2) and training continues where it stopped."""
  mesh_a = {"mesh.fsdp": 4, "mesh.sequence": 2, "train.checkpoint_async": False, "train.checkpoint_every": 2}
  train(load(CONFIG, _overrides(synth, **mesh_a, **{"train.steps": 4})), str(tmp_path / "ref"))
  # The run's step-2 checkpoint (mesh A) is where the moved run starts, on mesh B.
  shutil.copytree(tmp_path / "ref" / "checkpoints" / "2", tmp_path / "moved" / "checkpoints" / "2")
  mesh_b = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.sequence": 2, "train.peak_flops": 1e9, "train.checkpoint_every": 2}
  summary = train(load(CONFIG, _overrides(synth, **mesh_b, **{"train.steps": 4})), str(tmp_path / "moved"))
  assert summary["first_step"] == 3
  # Metrics: JSON lines and TensorBoard events hold the same losses; MFU once a peak is given.
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(tmp_path / "moved" / "tensorboard"))
  events.Reload()
  assert {e.step: round(e.value, 4) for e in events.Scalars("loss")} == {
      s: round(v, 4) for s, v in _losses(tmp_path / "moved").items()}
  lines = [json.loads(l) for l in open(tmp_path / "moved" / "metrics.jsonl")]
  assert all(0 < l["mfu"] for l in lines if l["step"] > 2) and all("lr/memaug" in l for l in lines)
  ref, moved = _losses(tmp_path / "ref"), _losses(tmp_path / "moved")
  for s in (3, 4):
    assert abs(moved[s] - ref[s]) / ref[s] < 1e-5, (s, moved[s], ref[s])


def test_held_out_evaluator_runs_every_n_steps(synth, tmp_path):
  """`evals.<name>` logs held-out loss and accuracy every N steps and at the end; the last equals an
  independent evaluation of the final parameters."""
  from hourjax.data import pipeline
  from hourjax.train.evaluate import evaluate
  run = load(CONFIG, _overrides(synth, **{"train.steps": 3, "mesh.fsdp": 4, "mesh.sequence": 2,
                                          "model.forgetting.spatial": "uniform"}))
  run.evals = {"heldout": {"every": 2, "data": {"batch_size": 4}}}
  summary = train(run, str(tmp_path))
  rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "metrics.jsonl"))}
  assert [s for s, r in rows.items() if "eval/heldout/loss" in r] == [2, 3]
  data = run.data.copy_and_resolve_references()
  data.epochs, data.batch_size = 1, 4
  cfg = model_config(run.model)
  want = evaluate(build.build("hour_llava", cfg), jax.device_get(summary["state"].params),
                  pipeline.from_config(data, cfg), template_ids=())
  assert want["tokens"] == rows[3]["eval/heldout/tokens"] > 0
  assert abs(rows[3]["eval/heldout/loss"] - want["loss"]) / want["loss"] < 1e-5


def test_accumulation_equals_one_big_batch():
  """accumulate=2 gives the loss and gradient of the whole batch (normalised by all its
  supervised tokens, not a mean of micro-batch means)."""
  import dataclasses
  from hourjax.synthetic.batches import synthetic_batch
  cfg = dataclasses.replace(CFG, forgetting=dataclasses.replace(CFG.forgetting, spatial="uniform"))
  model, params = build.build("hour_llava", cfg), build.init_params("hour_llava", cfg, jax.random.key(0))
  batch = synthetic_batch(cfg, jax.random.key(1), [20, 9, 31, 16], 24)
  batch = batch.replace(labels=batch.labels.at[1, 12:].set(-100))   # micro-batches with unequal token counts
  loss = lambda p, b, r: step_lib.loss_fn(model, p, b, r)
  (ref, ref_aux), ref_g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, batch, jax.random.key(2))
  (got, aux), g = jax.jit(lambda p, b, r: step_lib.accumulated_value_and_grad(loss, p, b, r, 2))(
      params, batch, jax.random.key(2))
  assert int(aux["supervised_tokens"]) == int(ref_aux["supervised_tokens"])
  assert abs(float(got) - float(ref)) / float(ref) < 1e-6
  from hourjax.numerics import tree_rel_err
  assert tree_rel_err(g, ref_g) < 1e-5
