"""Reliability (docs/reliability.md): no input, config or fault stops a run or loses work, and
every error names what is wrong. The fuzz test corrupts real encoder output at random and runs
it through the real pipeline and training; the config rules are checked field by field; damaged
checkpoints fall back to the newest intact one; every command's error is one line."""
import json
import os
import shutil
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import grain
import ml_collections
import numpy as np
import pytest

from conftest import xla_flags
from hourjax import cli
from hourjax.config import load, model_config
from hourjax.data import pipeline
from hourjax.data.video import write_video
from hourjax.synthetic.tokenizer import save_tiny_tokenizer
from hourjax.synthetic.videos import write_dataset
from hourjax.train.checkpoint import Checkpoints, DamagedCheckpoints
from hourjax.train.stage import run_stage
from hourjax.train.validate import ConfigError, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "hour_llava.py") + ":tiny,stage=3"
FUZZ_SEEDS = range(256)       # corrupted files, one per seed (docs/reliability.md quotes these)


# -- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,named", [
    ("train.optimizer.lr.llm=-1e-05", "train.optimizer.lr.llm=-1e-05: expected a number >= 0"),
    ("train.steps=-3", "train.steps=-3: expected an integer >= 0"),
    ("data.batch_size=0", "data.batch_size=0: expected an integer > 0"),
    ("train.checkpoint_every=-1", "train.checkpoint_every=-1"),
    ("train.checkpoint_keep=0", "train.checkpoint_keep=0"),
    ("train.optimizer.warmup_ratio=1.5", "train.optimizer.warmup_ratio=1.5: expected a number in [0, 1]"),
    ("train.optimizer.b2=1.0", "train.optimizer.b2=1.0"),
    ("train.optimizer.eps=0.0", "train.optimizer.eps=0.0"),
    ("train.optimizer.clip_norm=-1.0", "train.optimizer.clip_norm=-1.0"),
    ("train.optimizer.accumulate=0", "train.optimizer.accumulate=0"),
    ("train.optimizer.schedule=linear", "train.optimizer.schedule='linear': expected one of cosine, constant"),
    ("train.peak_flops=-1.0", "train.peak_flops=-1.0"),
    ("data.threads=0", "data.threads=0"),
    ("data.epochs=-1", "data.epochs=-1"),
    ("data.read.max_text_len=4096", "data.read.max_text_len=4096: longer than the largest text bucket"),
    ("data.read.too_long=crop", "data.read.too_long='crop'"),
    ("data.read.images=tiles", "data.read.images='tiles': expected one of resize, anyres"),
    ("model.max_crops=0", "model.max_crops=0: expected an integer >= 1"),
    ("model.unpad=round", "model.unpad='round': expected one of official, transformers"),
    ("data.read.frames=fixed:0", "data.read.frames='fixed:0'"),
    ("data.read.frames=fixed:100", "more frames than the largest frame bucket (64)"),
    ("data.read.image_size=224", "data.read.image_size=224: must equal model.vision.image_size=112"),
    ("data.buckets.frames=(64, 32)", "data.buckets.frames=(64, 32): expected increasing positive integers"),
    ("data.buckets.text=()", "data.buckets.text=()"),
    ("model.llm.num_kv_heads=3", "model.llm.num_heads=4: not divisible by num_kv_heads=3"),
    ("mesh.data=16", "mesh="),
    ("data.batch_size=3", "data.batch_size=3: not divisible by the mesh's 8 batch shards"),
    ("train.dtype=float16", "train.dtype='float16': expected one of bfloat16, float32"),
])
def test_each_bad_field_is_named_with_its_value_and_what_is_allowed(override, named):
  with pytest.raises(ConfigError) as e:
    validate(load(CONFIG, [override]))
  assert named in str(e.value) and "\n" not in str(e.value)


def test_prolongvid_reads_anyres_crops_only():
  with pytest.raises(ConfigError, match="data.read.images='resize': ProLongVid reads anyres crops"):
    validate(load(os.path.join(ROOT, "configs", "prolongvid.py") + ":tiny,stage=image_sft",
                  ["data.read.images=resize"]))


def test_decoder_only_run_without_a_context_schedule_is_valid():
  """A video preset switched to decoder-only (as `launch.aot_compile --decoder-only` does) has
  no train.context_schedule: nothing to check, not a crash."""
  run = load(CONFIG, ["mesh.data=1", "mesh.fsdp=4", "mesh.sequence=2"])
  run.train.decoder_only = True
  validate(run, devices=8, processes=1)


def test_ulysses_beyond_its_kv_heads_names_the_hybrid():
  mesh = ["mesh.data=2", "mesh.fsdp=1", "mesh.sequence=4"]    # the tiny LLM has 2 kv heads
  with pytest.raises(ConfigError, match="mesh.sequence=4: Ulysses splits the 2 key/value heads"
                                        ".*attention=hybrid"):
    validate(load(CONFIG, ["model.llm.attention=ulysses", *mesh]), devices=8, processes=1)
  validate(load(CONFIG, ["model.llm.attention=hybrid", *mesh]), devices=8, processes=1)


def test_every_problem_is_reported_at_once_and_types_are_checked():
  d = load(CONFIG, ["train.steps=-1", "data.batch_size=0"]).to_dict()
  d["train"]["optimizer"]["lr"]["llm"] = float("nan")
  d["train"]["seed"] = "0"                # a config built in Python has no typed overrides
  d["evals"] = {"held": {"every": 0}}
  run = ml_collections.ConfigDict(d)
  with pytest.raises(ConfigError, match=r"\(5 problems\)") as e:
    validate(run)
  for part in ("train.steps=-1", "data.batch_size=0", "train.optimizer.lr.llm=nan",
               "train.seed='0': expected an integer", "evals.held.every=0"):
    assert part in str(e.value)
  frozen = load(CONFIG, [f"train.optimizer.lr.{g}=0.0" for g in ("projector", "memaug", "llm")])
  with pytest.raises(ConfigError, match="every group is frozen"):
    validate(frozen)


@pytest.mark.parametrize("spec,devices", [("hour_llava.py:tiny,stage=3", 4), ("hour_llava.py:7b,stage=2", 64),
                                          ("hour_llava.py:7b,stage=3", 256), ("hour_llava.py:3b,stage=1", 128),
                                          ("prolongvid.py:7b,stage=2", 128),
                                          ("prolongvid.py:7b,stage=image_sft", 256),
                                          ("prolongvid.py:7b,stage=3,model=hour_llava", 128),
                                          ("prolongvid.py:tiny,stage=image_align", 4),
                                          ("prolongvid.py:tiny,stage=context_extension", 1),
                                          ("prolongvid.py:7b,stage=context_extension", 128)])
def test_every_preset_is_valid_on_its_machine(spec, devices):
  validate(load(os.path.join(ROOT, "configs", spec)), devices=devices, processes=1)


# -- commands: one line -------------------------------------------------------------------------

def _boom(kind):
  def main(argv):
    if kind == "config":
      raise ConfigError("bad run config: train.steps=-1: expected an integer >= 0 (0: one epoch)")
    if kind == "hint":
      e = PermissionError("workdir '/ro' is not writable (Read-only file system)")
      e.hint = "give a writable directory"
      raise e
    raise KeyError("question")
  return main


def test_an_error_is_one_line_unless_the_trace_is_asked_for(capsys, monkeypatch):
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  assert cli.run(_boom("config"), []) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "error: bad run config: train.steps=-1" in err[0] and "--traceback" in err[0]
  assert cli.run(_boom("hint"), []) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "not writable" in err[0] and err[1].endswith("hint: give a writable directory")
  assert cli.run(_boom("key"), []) == 1
  assert "error: KeyError: 'question'" in capsys.readouterr().err     # not a ValueError: its type says what
  with pytest.raises(KeyError):
    cli.run(_boom("key"), ["--traceback"])
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  with pytest.raises(ConfigError):
    cli.run(_boom("config"), [])
  assert cli.run(lambda argv: argv == ["a"] and 0, ["a", "--traceback"]) == 0    # the flag is not passed on


def _command(module, *args, env=None):
  run_env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1),
                 **(env or {}))
  run_env.pop(cli.TRACEBACK_ENV, None) if not env or cli.TRACEBACK_ENV not in env else None
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=run_env, capture_output=True,
                        text=True, timeout=300)


def test_commands_fail_at_start_up_with_one_line(tmp_path):
  """The real entry points: a bad config and an unwritable workdir, each one line and exit 1;
  the trace on request."""
  p = _command("launch.train", "--config", "configs/hour_llava.py:tiny,stage=3", "--workdir", str(tmp_path / "w"),
               "--config.train.steps=-1", "data.batch_size=0")
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 1 and len(lines) == 1, p.stderr
  assert "launch.train: error: bad run config (2 problems): train.steps=-1" in lines[0]
  assert "data.batch_size=0" in lines[0]
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  p = _command("launch.train", "--config", "configs/hour_llava.py:tiny,stage=3", "--workdir", str(blocker / "run"),
               "data.batch_size=2")
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 1 and len(lines) == 2, p.stderr
  assert f"workdir '{blocker / 'run'}' is not writable" in lines[0] and "hint:" in lines[1]
  p = _command("launch.train", "--config", "configs/hour_llava.py:tiny,stage=3", "--workdir", str(tmp_path / "w"),
               "train.steps=-1", "--traceback")
  assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr and "ConfigError" in p.stderr


# -- checkpoints --------------------------------------------------------------------------------

def _iterator():
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  next(it)
  return it


def _save_steps(directory, steps):
  ckpts = Checkpoints(directory, every=1, keep=10, use_async=False)
  it = _iterator()
  for s in steps:
    next(it)
    ckpts.save(s, {"w": jnp.full((4, 3), float(s)), "b": {"c": jnp.arange(5.0) * s}}, it, {"step": s})
  ckpts.close()


def _damage(root, how):
  if how == "metadata":
    os.remove(os.path.join(root, "state", "_METADATA"))
  elif how == "json":
    with open(os.path.join(root, "_CHECKPOINT_METADATA"), "w") as f:
      f.write('{"item_handlers": ')
  elif how == "data":
    for name in os.listdir(os.path.join(root, "data")):
      if name.startswith("process_"):
        os.remove(os.path.join(root, "data", name))
  elif how == "arrays":         # every array file cut short: only reading finds it
    for base, _, files in os.walk(os.path.join(root, "state")):
      for name in files:
        if base.endswith("/d"):
          path = os.path.join(base, name)
          with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)


@pytest.mark.parametrize("how", ["metadata", "json", "data", "arrays"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, how, caplog):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2, 3])
  _damage(os.path.join(directory, "3"), how)
  ckpts = Checkpoints(directory, every=1, keep=10, use_async=False)
  if how != "arrays":
    assert ckpts.damage(3) is not None and ckpts.damage(2) is None
  abstract = {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32), "b": {"c": jax.ShapeDtypeStruct((5,), jnp.float32)}}
  it = _iterator()
  step, state, saved = ckpts.restore_latest(abstract, it)
  assert saved == {"step": 2}
  assert step == 2 and float(state["w"][0, 0]) == 2.0
  assert next(it) == 3            # the data iterator continues after step 2's batch
  assert "checkpoint step 3" in caplog.text and "damaged" in caplog.text and "resumed from step 2" in caplog.text
  assert os.path.isdir(str(tmp_path / "checkpoints.damaged" / "3")) and ckpts.latest() == 2   # kept, out of the way
  ckpts.save(3, state, it, {"step": 3})         # the run goes on and saves step 3 again
  ckpts.close()
  assert Checkpoints(directory, every=1, keep=10).latest() == 3


def test_all_checkpoints_damaged_stops_instead_of_starting_over(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2])
  for s in (1, 2):
    _damage(os.path.join(directory, str(s)), "metadata")
  ckpts = Checkpoints(directory, every=1, keep=10, use_async=False)
  with pytest.raises(DamagedCheckpoints, match=r"step 2: state/_METADATA is missing; step 1: state/_METADATA"):
    ckpts.restore_latest({"w": jax.ShapeDtypeStruct((4, 3), jnp.float32)}, _iterator())
  assert sorted(os.listdir(directory)) == ["1", "2"]      # nothing moved, nothing deleted


# -- data: too long, fuzzed files, the end of a finite run --------------------------------------

def _data(root, **kw) -> ml_collections.ConfigDict:
  run = load(CONFIG, [f"data.root={root}", f"data.read.tokenizer={os.path.join(root, 'tokenizer')}"])
  for k, v in kw.items():
    node = run.data
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return run.data


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("long"))
  save_tiny_tokenizer(os.path.join(root, "tokenizer"))
  os.makedirs(os.path.join(root, "v"))
  rng = np.random.default_rng(0)
  write_video(os.path.join(root, "v", "long.mp4"), rng.integers(0, 255, (90, 32, 32, 3), np.uint8), fps=1)
  write_video(os.path.join(root, "v", "short.mp4"), rng.integers(0, 255, (20, 32, 32, 3), np.uint8), fps=1)
  conv = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "Noise."}]
  with open(os.path.join(root, "videos.json"), "w") as f:
    json.dump([{"id": name, "video": f"{name}.mp4", "conversations": conv} for name in ("long", "short")], f)
  return root


def test_a_video_longer_than_the_largest_bucket_is_subsampled_or_skipped(long_video):
  """90 frames at 1 FPS against buckets of at most 64 frames: spread over 64 frames by the
  official frames_upbound rule (linspace over the whole video), or skipped, by config; counted."""
  cfg = model_config(load(CONFIG).model)
  data = _data(long_video, sources=({"annotations": "videos.json", "media": "v"},), epochs=1, batch_size=1)
  out = {m.ids[0]: (b, m) for b, m in pipeline.from_config(data, cfg) if b is not None}
  batch, meta = out["long"]
  assert batch.pixels.shape[1] == 64 and meta.subsampled == ["long"] and out["short"][1].subsampled == []
  with av.open(os.path.join(long_video, "v", "long.mp4")) as src:
    every = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
  from PIL import Image
  want = [np.asarray(Image.fromarray(every[i]).resize((112, 112), Image.BICUBIC))
          for i in np.linspace(0, 89, 64).astype(int)]
  np.testing.assert_array_equal(batch.pixels[0], np.stack(want))
  data.read.too_long = "skip"
  metas = [m for _, m in pipeline.from_config(data, cfg)]
  skipped = [s for m in metas for s in m.skipped]
  assert [i for i, _ in skipped] == ["long"] and "exceed the largest frame bucket (64" in skipped[0][1]
  assert [i for m in metas for i in m.ids] == ["short"]


def _corrupt(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
  """One random corruption of a valid file: cut at a random offset, a few bytes flipped, or a
  header (the file's start or the moov box) zeroed."""
  kind = ("truncate", "flip", "zero_start", "zero_moov")[int(rng.integers(4))]
  b = bytearray(data)
  if kind == "truncate":
    return kind, bytes(b[:int(rng.integers(len(b) // 10, len(b)))])
  if kind == "flip":
    for _ in range(int(rng.integers(1, 20))):
      b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
  elif kind == "zero_start":
    n = int(rng.integers(4, 2048))
    b[:n] = bytes(len(b[:n]))
  else:
    at = max(0, data.find(b"moov") - 4)
    n = int(rng.integers(8, 256))
    b[at:at + n] = bytes(len(b[at:at + n]))
  return kind, bytes(b)


def _decodes(path: str) -> bool:
  """An independent verdict: PyAV opens the file and decodes every frame."""
  try:
    with av.open(path) as src:
      return sum(1 for _ in src.decode(video=0)) > 0
  except Exception:
    return False


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("fuzz"))
  write_dataset(root, num_videos=12, seconds=(6, 14), fps=4, size=48, seed=7)
  save_tiny_tokenizer(os.path.join(root, "tokenizer"))
  good = [json.loads(line) for line in open(os.path.join(root, "annotations.jsonl"))]
  for r in good[:6]:       # H.264 with the index first (as cameras write it): cuts leave a playable start
    with av.open(os.path.join(root, "synthetic", r["video"])) as src:
      frames = np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])
    good.append(dict(r, id=r["id"] + "_h264", video=r["video"][:-4] + "_h264.mp4"))
    write_video(os.path.join(root, "synthetic", good[-1]["video"]), frames, fps=4, codec="libx264",
                options={"movflags": "faststart"})
  records, kinds = list(good), {}
  for seed in FUZZ_SEEDS:
    rng = np.random.default_rng(seed)
    base = good[seed % len(good)]
    kind, data = _corrupt(open(os.path.join(root, "synthetic", base["video"]), "rb").read(), rng)
    name = f"fuzz_{seed:03d}_{kind}.mp4"
    with open(os.path.join(root, "synthetic", name), "wb") as f:
      f.write(data)
    records.append(dict(base, id=f"fuzz_{seed:03d}", video=name))
    kinds[f"fuzz_{seed:03d}"] = kind
  with open(os.path.join(root, "fuzz.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps({k: v for k, v in r.items() if k != "events"}) + "\n")
  return {"root": root, "records": records, "kinds": kinds}


def test_fuzzed_videos_never_crash_the_pipeline_and_every_bad_file_is_counted(fuzzed):
  cfg = model_config(load(CONFIG).model)
  data = _data(fuzzed["root"], sources=({"annotations": "fuzz.jsonl"},), epochs=1, batch_size=2)
  seen, skipped = [], {}
  for batch, meta in pipeline.from_config(data, cfg):
    seen += meta.ids + meta.dropped
    skipped.update(dict(meta.skipped))
    if batch is not None:
      assert batch.pixels.shape[0] == 2 and np.isfinite(batch.pixels).all()
  records = {r["id"]: r for r in fuzzed["records"]}
  assert sorted(seen + list(skipped)) == sorted(records)          # every sample accounted for, once
  for rid, reason in skipped.items():
    assert records[rid]["video"] in reason, reason                  # named by its file
  undecodable = {rid for rid, r in records.items()
                 if not _decodes(os.path.join(fuzzed["root"], "synthetic", r["video"]))}
  assert undecodable <= set(skipped)                                # PyAV's verdict: none slipped through
  assert len(undecodable) >= len(FUZZ_SEEDS) // 4 and not set(skipped) & {r["id"] for r in fuzzed["records"][:18]}
  survivors = [i for i in seen if i.startswith("fuzz_")]
  assert len(survivors) >= 4                                       # damaged but decodable files are kept


def test_a_finite_run_over_fuzzed_files_ends_cleanly_and_resumes_past_a_damaged_checkpoint(fuzzed, tmp_path):
  """One epoch (train.steps=0) whose samples are lost to skips: every step runs, the last is
  checkpointed and params/ written, the summary and metrics.jsonl count every sample. Then the
  newest checkpoint is damaged: the rerun falls back to the one before and retrains the same steps."""
  over = [f"data.root={fuzzed['root']}", f"data.read.tokenizer={os.path.join(fuzzed['root'], 'tokenizer')}",
          "data.sources=({'annotations': 'fuzz.jsonl'},)", "data.epochs=1", "train.steps=0",
          "train.checkpoint_every=2", "train.checkpoint_async=False", "mesh.fsdp=4", "mesh.sequence=2",
          "model.forgetting.spatial=uniform"]
  run = load(CONFIG, over)
  workdir = str(tmp_path / "run")
  summary = run_stage(run, workdir)
  assert summary["data_ended"] and not summary["preempted"] and os.path.isdir(os.path.join(workdir, "params"))
  counts = summary["data"]
  assert counts["samples_video"] + counts["skipped"] + counts["dropped"] == len(fuzzed["records"])
  assert counts["samples_video"] == 4 * summary["last_step"] and counts["skipped"] > 0
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = [s for r in rows for s in r.get("skipped", [])]
  assert len(logged) == counts["skipped"] and all(r_id.startswith("fuzz_") for r_id, _ in logged)
  assert sum(len(r.get("dropped", [])) for r in rows) == counts["dropped"]
  last = summary["last_step"]
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert saved[-1] == last
  losses, first_rows = {r["step"]: r["loss"] for r in rows if "loss" in r}, len(rows)
  # Damage the newest checkpoint and remove params/: the rerun must redo the last steps.
  _damage(os.path.join(workdir, "checkpoints", str(last)), "metadata")
  shutil.rmtree(os.path.join(workdir, "params"))
  again = run_stage(run, workdir)
  assert again["first_step"] == saved[-2] + 1 and again["last_step"] == last and again["data_ended"]
  assert again["data"] == counts                  # counts since step 0: restored with the checkpoint
  assert os.path.isdir(os.path.join(workdir, "params"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", str(last)))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  redone = {r["step"]: r["loss"] for r in rows[first_rows:] if "loss" in r}
  assert redone and all(redone[s] == losses[s] for s in redone)    # bit-identical, from the older checkpoint
