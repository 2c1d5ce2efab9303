"""The synthetic long-video multiple-choice benchmark (answers recomputed from the rendered
pixels, balanced, the needle dropped by uniform forgetting as stated) and the ablation study's
smoke mode (the same script, a few steps)."""
import dataclasses
import json
import os
import shlex

import jax
import numpy as np
import pytest

from hourjax.data.batch import VideoBatch
from hourjax.synthetic import long_video_mcq as mcq
from hourjax.models.forgetting import ForgettingConfig, video_layout
from conftest import jit_apply


def _flash_frames(pixels):
  """Frames showing the white checkerboard: white in the screen's opposite corners, which only a
  full-screen flash reaches (the framed circle's white frame is inside the shape's square)."""
  white = np.all(pixels >= 240, axis=-1)
  return np.flatnonzero(white[:, 0, 0] & white[:, -1, -1])


def _runs(frames):
  return 0 if len(frames) == 0 else 1 + int(np.sum(np.diff(frames) > 1))


def _colour_name(rgb, table):
  return min(table, key=lambda k: np.abs(np.asarray(table[k]) - rgb).sum())


@pytest.mark.parametrize("frames", [128, 256])
def test_answers_follow_from_the_pixels(frames):
  items = mcq.make_split(60, seed=5, frames=frames)
  for item in items:
    px = mcq.render(item, frames, 32)
    flashes = _flash_frames(px)
    assert _runs(flashes) == len(item.flashes)
    c = 16          # the centre pixel shows the segment's shape
    evidence = flashes
    if item.task == "needle":
      f = flashes[0]
      colours = {_colour_name(px[f, y, x], mcq.COLOURS) for y, x in [(0, 12), (12, 0)]}   # off-white checks
      assert item.options[item.answer] in colours
    elif item.task == "framed":
      # The framed frames, read from the pixels: a corner of the square outside the circle is
      # white (a framed video has no flash), and the circle's centre has the answer's colour.
      evidence = np.flatnonzero(np.all(px[:, 8, 8] == mcq.WHITE, -1))
      assert not len(flashes) and _runs(evidence) == 1 and len(evidence) == item.framed[1]
      assert item.options[item.answer] == _colour_name(px[evidence[0], c, c], mcq.COLOURS)
      # A busy video: the shape or its colour changes at least every 3 frames.
      changes = np.flatnonzero(np.any(px[1:] != px[:-1], (1, 2, 3))) + 1
      assert np.diff(np.concatenate([[0], changes, [frames]])).max() <= 3
    elif item.task == "order":
      after = flashes[-1] + 1
      assert item.options[item.answer] == _colour_name(px[after, c, c], mcq.COLOURS)
    elif item.task == "counting":
      assert int(item.options[item.answer]) == _runs(flashes)
    else:
      quiet = np.setdiff1d(np.arange(frames), flashes)[0]
      assert item.options[item.answer] == _colour_name(px[quiet, 0, 0], mcq.BACKGROUNDS)
    # needle_dropped: no evidence frame among the frames uniform 1/4 temporal forgetting retains.
    layout = video_layout([frames], ForgettingConfig(min_memory_frames=frames))
    retained = set(layout.retained_frames[0][layout.retained_frames[0] >= 0].tolist())
    assert item.needle_dropped == (not retained & set(evidence.tolist()))
    assert set(evidence.tolist()) == {f for s, n in item.evidence for f in range(s, s + n)}


def test_splits_are_balanced_and_the_needle_is_often_forgotten():
  items = mcq.make_split(2500, seed=0, frames=128)
  for task in mcq.TASKS:
    answers = np.bincount([i.answer for i in items if i.task == task], minlength=4)
    assert answers.sum() == 500 and answers.min() > 500 / 4 * 0.75, (task, answers)
  for task in ("needle", "framed"):
    dropped = np.mean([i.needle_dropped for i in items if i.task == task])
    assert 0.35 < dropped < 0.65, (task, dropped)
  assert mcq.make_split(8, seed=0, frames=128) == items[:8]          # reproducible from the seed
  assert mcq.make_split(8, seed=1, frames=128) != items[:8]
  with pytest.raises(ValueError, match="at least 96"):
    mcq.plan("needle", np.random.default_rng(0), frames=50)


def test_keyframe_forgetting_finds_the_flash_for_free_and_not_the_framed_circle():
  """The benchmark's two needles against the surprise heuristic (keyframe forgetting, on the
  pixels as frame embeddings, keeping 1/4 of the frames): it keeps the flash of every needle
  video, and the framed circle no more often than uniform 1/4 sampling does."""
  import jax.numpy as jnp
  from hourjax.models.forgetting import temporal_keyframe
  frames = 128
  items = mcq.make_split(200, seed=7, frames=frames)
  kept = {}
  for task in ("needle", "framed"):
    its = [it for it in items if it.task == task]
    px = np.stack([mcq.render(it, frames, 32) for it in its]).reshape(len(its), frames, -1) / 255.0
    chosen = np.asarray(temporal_keyframe(jnp.asarray(px, jnp.float32), jnp.ones((len(its), frames), bool),
                                          jnp.full((len(its),), frames // 4), frames // 4))
    kept[task] = np.mean([bool(set(range(s, s + n)) & set(k.tolist())) for it, k in zip(its, chosen)
                          for s, n in it.evidence])
    kept[task + " uniform"] = 1 - np.mean([it.needle_dropped for it in its])
  assert kept["needle"] == 1.0, kept
  assert kept["framed"] <= kept["framed uniform"], kept


def test_written_split_decodes_to_the_rendered_frames(tmp_path):
  from hourjax.data import video
  path = mcq.write_split(str(tmp_path), 2, seed=3, frames=128)
  rows = [json.loads(l) for l in open(path)]
  assert rows[0]["conversations"][1]["value"] == rows[0]["answer"] and "<image>" in rows[0]["conversations"][0]["value"]
  items = mcq.make_split(2, seed=3, frames=128)
  mp4 = os.path.join(str(tmp_path), rows[0]["data_source"], rows[0]["video"])
  info = video.probe(mp4)
  assert info.frames == 128 and abs(info.fps - 1) < 1e-6
  decoded = video.decode_frames(mp4, np.arange(128), 32).astype(float)
  # mpeg4 with 4:2:0 chroma at 32 px blurs the checkerboard: compare against the other video.
  own = np.abs(decoded - mcq.render(items[0], 128, 32)).mean()
  other = np.abs(decoded - mcq.render(items[1], 128, 32)).mean()
  assert own < 20 and other > 2 * own, (own, other)


def test_choose_option_reads_the_answer_position():
  """The predicted option is the argmax over the option tokens of the logits one position
  before the answer word, found independently from the tokenized text."""
  from launch import ablation
  from hourjax.data.chat import tokenize_conversation
  from hourjax.data.chat import load_tokenizer
  from hourjax.models import build
  from hourjax.train.evaluate import choose_option
  import tempfile
  study = ablation.SMOKE
  items = mcq.make_split(4, seed=2, frames=study.frames)
  with tempfile.TemporaryDirectory() as d:
    ablation.save_tokenizer(d, mcq.make_split(8, seed=0, frames=study.frames))
    tok = load_tokenizer(d)
  options = np.array([[tok.encode(w)[0] for w in it.options] for it in items])
  batch = ablation.tokenize(items, tok)
  cfg = ablation.model_config(study, ablation.ARMS[1])          # uniform, no MemAug: one token per frame
  model = build.build("hour_llava", cfg)
  params = build.init_params("hour_llava", cfg, jax.random.key(0))
  feats = np.random.default_rng(0).normal(size=(4, study.frames, 4, 32)).astype(np.float32)
  batch = VideoBatch(batch["input_ids"], batch["attention_mask"], batch["labels"],
                     video_layout([study.frames] * 4, cfg.forgetting), features=feats)
  got = np.asarray(choose_option(model, params, batch, jax.random.key(1), options))
  logits = np.asarray(jit_apply(model, params, batch.input_ids, batch.attention_mask, batch.labels,
                                  **batch.model_inputs(), rng=jax.random.key(1))["logits"])
  n_visual = (study.frames // 4) * 2          # retained frames x (1 token + newline)
  for i, item in enumerate(items):
    ids, _ = tokenize_conversation(tok, item.conversation(), has_image=True)
    answer = len(ids) - 3                     # ... <the option word> <|im_end|> \n
    assert ids[answer] == options[i, item.answer]
    at = answer - 1 + n_visual - 1            # the placeholder becomes n_visual tokens
    assert got[i] == np.argmax(logits[i, at, options[i]])


@pytest.fixture(scope="module")
def smoke_work(tmp_path_factory):
  """One workdir for the smoke studies: the splits are rendered and encoded once."""
  return tmp_path_factory.mktemp("ablation_work")


def test_smoke_study_writes_table_and_plot(tmp_path, smoke_work):
  from launch import ablation
  out, work = tmp_path / "out", smoke_work
  assert ablation.main(["--smoke", "--workdir", str(work), "--out", str(out)]) == 0
  doc = (out / "ablation.md").read_text()
  assert ablation.DOC_BEGIN in doc and "python -m launch.ablation --smoke" in doc
  for arm in ablation.SMOKE_ARMS:
    assert f"| {arm} |" in doc
  assert (out / "ablation.png").stat().st_size > 10_000
  results = json.loads((out / "ablation_results_smoke.json").read_text())["runs"]
  acc = results["Hour-LLaVA (MemAug)"]["0"]["accuracy"]
  assert set(mcq.TASKS) <= set(acc) and all(0 <= v <= 1 for v in acc.values() if v == v)
  # A re-run trains nothing and rewrites the same section in place; another study's run there
  # stops, naming what differs, and leaves the results as they were.
  assert ablation.main(["--smoke", "--workdir", str(work), "--out", str(out)]) == 0
  assert (out / "ablation.md").read_text().count(ablation.DOC_BEGIN) == 1
  before = (out / "ablation_results_smoke.json").read_text()
  with pytest.raises(SystemExit, match=r"different study's results \(lr: 0.003 there, 0.01 here\)"):
    ablation.main(["--smoke", "--lr", "0.01", "--workdir", str(work), "--out", str(out)])
  assert (out / "ablation_results_smoke.json").read_text() == before


def test_dropped_frames_reach_the_llm_only_through_memaug():
  """A frame that temporal forgetting drops changes the answer logits only when MemAug reads a
  memory holding it; with no MemAug or a decayed-only memory it cannot. And MemAug's
  parameters get a gradient from the answer. (At the tiny preset's N(0, 1/fan_in) init; at
  HF's N(0, 0.02) the dropped frame moved the logits by 1e-5 relative: see models/layers.INITS.)"""
  from launch import ablation
  from hourjax.models import build
  from hourjax.train.step import loss_fn
  # At fan_in: the tiny preset's residual_zero MemAug starts as the identity on its queries
  # (test_hour_llava), so at init no memory frame could reach the logits.
  study = dataclasses.replace(ablation.SMOKE, memaug_init="fan_in")
  arms = {a.name: a for a in ablation.ARMS}
  rng = np.random.default_rng(0)
  ids = np.array([[1, 2, -200, 3, 4, 5, 6, 7]], np.int32)
  labels = np.array([[-100, -100, -100, -100, -100, 5, 6, 7]], np.int32)
  feats = rng.normal(size=(1, study.frames, 4, 32)).astype(np.float32)
  dropped = 1                                  # retained frames are 0, 4, 8, ... (uniform 1/4)
  changed = feats.copy()
  changed[0, dropped] += 3.0

  def logits(name, f):
    cfg = ablation.model_config(study, arms[name])
    layout = video_layout([study.frames], cfg.forgetting)
    assert dropped not in layout.retained_frames[0]
    model = build.build("hour_llava", cfg)
    params = build.init_params("hour_llava", cfg, jax.random.key(0))
    out = jax.jit(lambda p, f: model.apply({"params": p}, ids, np.ones_like(ids), labels, layout=layout, features=f,
                                           rng=jax.random.key(1)))(params, f)      # eager would take minutes
    return np.asarray(out["logits"]), model, params, layout
  base, model, params, layout = logits("Hour-LLaVA (MemAug)", feats)
  assert np.abs(logits("Hour-LLaVA (MemAug)", changed)[0] - base).max() > 1e-3 * np.abs(base).max()
  for name in ("uniform", "decayed only"):
    np.testing.assert_array_equal(logits(name, changed)[0], logits(name, feats)[0])
  batch = VideoBatch(ids, np.ones_like(ids), labels, layout, features=feats)
  grads = jax.jit(jax.grad(lambda p: loss_fn(model, p, batch, jax.random.key(1))[0]))(params)
  assert all(float(np.abs(g).max()) > 0 for g in jax.tree.leaves(grads["memaug"]))


def test_curriculum_smoke_records_recall_on_the_dropped_needles(tmp_path, smoke_work):
  """--pretrain-steps / --recall-steps run the curriculum's stages (the shared stage cached per
  seed), the MemAug arm records its attention on the dropped evidence over training, and the
  report draws it."""
  from launch import ablation
  out, work = tmp_path / "out", smoke_work
  argv = ["--smoke", "--arms", "Hour-LLaVA (MemAug)", "--pretrain-steps", "2", "--recall-steps", "1",
          "--eval-every", "1", "--workdir", str(work), "--out", str(out)]
  assert ablation.main(argv) == 0
  assert len(list(work.glob("pretrain_*_s0.pkl"))) == 1
  run = json.loads((out / "ablation_results_smoke.json").read_text())["runs"]["Hour-LLaVA (MemAug)"]["0"]
  steps = [s for s, _ in run["recall_mass"]]
  assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == ablation.SMOKE.steps
  assert all(v > 0 for _, m in run["recall_mass"] for v in m.values())
  doc = (out / "ablation.md").read_text()
  assert "Curriculum:" in doc and "ablation_recall.png" in doc and (out / "ablation_recall.png").exists()
  assert f"--arms 'Hour-LLaVA (MemAug)' --out {shlex.quote(str(out))}" in doc      # the command reruns this very report


def test_recall_mass_is_one_when_the_evidence_is_every_frame():
  """recall_mass divides the attention on the evidence by its uniform share: with every frame as
  evidence the share is all of the memory and the ratio is exactly 1; on one frame it is the
  frame's attention x the number of memory frames (a float64 recomputation from the sowed
  weights)."""
  import functools
  from launch import ablation
  from hourjax.models import build
  study = dataclasses.replace(ablation.SMOKE, memaug_init="fan_in")
  cfg = ablation.model_config(study, ablation.ARMS[0])
  model = build.build("hour_llava", cfg)
  params = build.init_params("hour_llava", cfg, jax.random.key(0))
  layout = video_layout([study.frames] * 2, cfg.forgetting)
  ids = np.array([[1, 2, -200, 3, 4, 5, 6, 7]] * 2, np.int32)
  labels = np.array([[-100, -100, -100, -100, -100, 5, 6, 7]] * 2, np.int32)
  feats = np.random.default_rng(0).normal(size=(2, study.frames, 4, 32)).astype(np.float32)
  batch = VideoBatch(ids, np.ones_like(ids), labels, layout, features=feats)
  probe = jax.jit(functools.partial(ablation.recall_mass, model, tokens_per_frame=cfg.pool_size ** 2 + 1))
  np.testing.assert_allclose(np.asarray(probe(params, batch, np.ones((2, study.frames), bool))), 1, rtol=1e-5)
  one = np.zeros((2, study.frames), bool)
  one[:, 5] = True
  _, inter = jax.jit(lambda p: model.apply({"params": p}, ids, np.ones_like(ids), labels, **batch.model_inputs(),
                                           rng=jax.random.key(99), head=False, mutable=["intermediates"]))(params)
  w = np.asarray(inter["intermediates"]["memaug"]["layers_0"]["cross_attn"]["recall_weights"][0], np.float64)
  rows = np.any(np.asarray(inter["intermediates"]["memaug_query"][0]) != 0, -1)
  frame = np.asarray(inter["intermediates"]["memory_position_ids"][0]) // (cfg.pool_size ** 2 + 1)
  ref = [w[b][rows[b]][:, frame[b] == 5].sum(-1).mean() * study.frames for b in range(2)]
  np.testing.assert_allclose(np.asarray(probe(params, batch, one)), ref, rtol=1e-5)


def test_recall_on_dropped_trains_memaug_alone_only_where_the_answer_needs_the_memory():
  """--recall-on dropped: the MemAug-alone stage draws only needle / framed questions whose every
  evidence frame uniform 1/4 forgetting drops (recomputed here from the frames it retains); the
  other stages draw every question; bad settings fail naming the field."""
  from launch import ablation
  from hourjax.synthetic.long_video_mcq import make_split, uniform_retained
  frames = 96
  items = make_split(200, 0, frames)
  kept = set(uniform_retained(frames).tolist())
  spans = [it.flashes[:1] if it.task == "needle" else [it.framed] if it.task == "framed" else [] for it in items]
  needs = np.array([bool(s) and not any(f in kept for a, n, _ in s for f in range(a, a + n)) for s in spans])
  data = {"input_ids": np.zeros((len(items), 4)),
          "needs_memory": ablation.needs_memory(items)}
  study = dataclasses.replace(ablation.SMOKE, pretrain_steps=2, recall_steps=1, recall_on="dropped")
  assert 0 < needs.sum() < len(items)
  np.testing.assert_array_equal(ablation.stage_rows(study, "recall", data), np.flatnonzero(needs))
  for stage in ("pretrain", "main"):
    np.testing.assert_array_equal(ablation.stage_rows(study, stage, data), np.arange(len(items)))
  np.testing.assert_array_equal(ablation.stage_rows(dataclasses.replace(study, recall_on="all"), "recall", data),
                                np.arange(len(items)))
  with pytest.raises(ValueError, match="recall_on='some'"):
    dataclasses.replace(study, recall_on="some")
  with pytest.raises(ValueError, match="set recall_steps"):
    dataclasses.replace(ablation.SMOKE, recall_on="dropped")


def test_main_stage_rates_scale_only_the_named_modules_in_the_main_stage():
  from launch import ablation
  study = dataclasses.replace(ablation.SMOKE, pretrain_steps=2, recall_steps=1, llm_lr_scale=0.2, memaug_lr_scale=0.1)
  arm = ablation.ARMS[0]                                      # Hour-LLaVA: has MemAug
  lr = study.lr
  assert ablation._stage(study, arm, "main") == (dict(projector=lr, memaug=lr * 0.1, llm=lr * 0.2), study.steps - 1)
  assert ablation._stage(study, arm, "recall") == (dict(memaug=lr), 1)
  assert ablation._stage(study, arm, "pretrain") == (dict(projector=lr, llm=lr), 2)


def test_the_report_command_runs_the_study_it_reports():
  """The command line written into the report parses back to the very study it describes (each
  field the command line sets, the tuple of seeds included), its arms and its --out, for the
  full study, the smoke one and the plain study (no curriculum) run from the full study's base."""
  from launch import ablation
  assert ablation.command_line(ablation.Study()) == "python -m launch.ablation"
  changed = dict(steps=700, seeds=(5, 6), lr=1e-3, frames=112, batch=8, memaug_init="fan_in",
                 pretrain_steps=200, recall_steps=100, recall_on="dropped", llm_lr_scale=0.2,
                 memaug_lr_scale=0.3, eval_every=50)
  assert set(changed) == set(ablation.FLAGS)
  for base in (ablation.Study(), ablation.SMOKE):   # each value differs from both bases (recall_on has two)
    assert all(getattr(base, f) != v for f, v in changed.items() if f != "recall_on"), base
  plain = dict(pretrain_steps=0, recall_steps=0, recall_on="all", memaug_lr_scale=1.0)
  arms = ["keyframe", "memory 25%"]
  for base, smoke in ((ablation.Study(), False), (ablation.SMOKE, True)):
    for fields in (changed, plain, dict(seeds=(3,), memaug_lr_scale=0.5)):
      study = dataclasses.replace(base, **fields)
      for names, out in ((None, None), (arms, "docs/a study")):
        argv = shlex.split(ablation.command_line(study, smoke, names, out))
        assert argv[:3] == ["python", "-m", "launch.ablation"] and ("--smoke" in argv) == smoke
        args, parsed = ablation.parse_args(argv[3:])
        assert parsed == study and args.arms == names
        assert args.out == (out or ablation.DOCS)
  assert "--arms" not in ablation.command_line(ablation.Study(), arms=[x.name for x in ablation.ARMS])
