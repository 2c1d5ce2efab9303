"""ProLongVid's context-extension stage: packed long text (exact, resumable, never crossing a
document), the packed loss with ring attention on 8 devices equal to the dense one, the stage's
progressive schedule through the real loop, and its parameters initialising a video stage."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from hourjax.config import load, model_config
from hourjax.data import text
from hourjax.data.chat import load_tokenizer
from hourjax.synthetic.tokenizer import save_tiny_tokenizer
from hourjax.models import build
from hourjax.constants import IGNORE_INDEX
from hourjax.data.batch import PackedBatch
from hourjax.parallel import mesh as mesh_lib
from hourjax.train.step import lm_loss_fn
from hourjax.numerics import rel_err, tree_rel_err
from conftest import jit_apply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "prolongvid.py")
WORDS = "the cat sat on a mat and then ran far away from home while birds sang".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """40 documents of 3-120 words: 25 in JSONL, 15 in an ArrayRecord file (raw text)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  root = tmp_path_factory.mktemp("text")
  rng = np.random.default_rng(0)
  docs = [" ".join(rng.choice(WORDS, int(rng.integers(3, 120)))) + f" doc{i}." for i in range(40)]
  with open(root / "a.jsonl", "w") as f:
    for d in docs[:25]:
      f.write(json.dumps({"text": d, "meta": {"source": "test"}}) + "\n\n")   # blank lines skipped
  writer = ArrayRecordWriter(str(root / "b.array_record"), "group_size:1")
  for d in docs[25:]:
    writer.write(d.encode())
  writer.close()
  tok = save_tiny_tokenizer(str(root / "tok"), docs)
  return {"root": str(root), "docs": docs, "tok": tok,
          "patterns": [str(root / "a.jsonl"), str(root / "b.array_record")]}


def _pieces(batch):
  """Each row's document pieces: (tokens, positions, labels) per segment id > 0."""
  out = []
  for ids, seg, pos, lab in zip(batch["input_ids"], batch["segment_ids"], batch["positions"], batch["labels"]):
    for s in np.unique(seg[seg > 0]):
      m = seg == s
      out.append((ids[m], pos[m], lab[m]))
  return out


def test_documents_pack_exactly_and_resume(corpus):
  tok = load_tokenizer(corpus["tok"])
  docs = text.Documents(corpus["patterns"])
  assert len(docs) == 40 and docs[3] == corpus["docs"][3] and docs[30] == corpus["docs"][30]
  ds = text.dataset(corpus["patterns"], corpus["tok"], seq_len=48, batch_size=2, seed=3, epochs=1)
  batches = [dataclasses.asdict(b) for b, _ in ds]
  stream = np.concatenate([b["input_ids"].reshape(-1)[b["segment_ids"].reshape(-1) > 0] for b in batches])
  # Concat-then-split loses nothing: the stream is the shuffled documents, each + EOS, in order
  # (up to the partly filled last rows that drop_remainder drops).
  order = list(grain_order(40, seed=3))
  expected = np.concatenate([tok.encode(corpus["docs"][i]) + [tok.end_of_text]
                             for i in order])
  assert len(stream) > 0.8 * len(expected)
  np.testing.assert_array_equal(stream, expected[:len(stream)])
  for ids, pos, lab in _pieces(batches[0]) + _pieces(batches[1]):
    np.testing.assert_array_equal(pos, np.arange(len(ids)))           # positions restart per piece
    assert lab[0] == IGNORE_INDEX                                      # not predicted across documents
    np.testing.assert_array_equal(lab[1:], ids[1:])
  b = batches[0]
  assert {k: v.shape for k, v in b.items()} == {k: (2, 48) for k in ("input_ids", "labels", "positions", "segment_ids")}
  # Resume: the iterator state after 2 batches continues with the same batches.
  it = iter(ds)
  next(it), next(it)
  state = it.get_state()
  rest = [next(it)[0].input_ids for _ in range(3)]
  again = iter(ds)
  again.set_state(state)
  for want in rest:
    np.testing.assert_array_equal(next(again)[0].input_ids, want)
  # Two processes read disjoint halves of the documents.
  seen = []
  for p in range(2):
    part = text.dataset(corpus["patterns"], corpus["tok"], seq_len=48, batch_size=1, seed=3, epochs=1,
                        process_index=p, process_count=2)
    ids = np.concatenate([x.input_ids.reshape(-1) for x, _ in part])
    seen.append({w for w in tok.decode(ids).split() if w.startswith("doc")})
  assert seen[0] and seen[1] and not seen[0] & seen[1]


def grain_order(n, seed):
  import grain
  return grain.MapDataset.range(n).shuffle(seed=seed)


def test_bad_documents_fail_clearly(tmp_path, corpus):
  with pytest.raises(FileNotFoundError, match="no such file"):
    text.Documents([str(tmp_path / "missing*.jsonl")])
  (tmp_path / "bad.jsonl").write_text('{"content": "no text field"}\n')
  with pytest.raises(ValueError, match="'text' field"):
    text.Documents([str(tmp_path / "bad.jsonl")])[0]
  from hourjax.train.loop import check_run
  with pytest.raises(ValueError, match="data.documents=.*data.tokenizer=''"):     # with any other problem
    check_run(load(CONFIG + ":tiny,stage=context_extension"))


def _tiny_decoder(attention="xla"):
  cfg = model_config(load(CONFIG + ":tiny,stage=context_extension").model).llm
  assert cfg.rope_theta == 1e9
  import dataclasses
  return dataclasses.replace(cfg, attention=attention)


def _packed_batch(corpus, seq_len=64, batch=4):
  """The first (PackedBatch, meta) of the corpus, as a dict of its fields."""
  packed, _ = next(iter(text.dataset(corpus["patterns"], corpus["tok"], seq_len=seq_len, batch_size=batch, seed=1)))
  return dataclasses.asdict(packed)


# Context-parallel decoders and their meshes: the hybrid runs Ulysses in pairs (2 kv heads) and
# a ring of 4 pairs, so it covers both of its parts; all-gather and plain Ulysses are checked
# against dense attention in tests/test_context_parallel.py (kept out of here for CI time).
CONTEXT_PARALLEL = {"ring": {"data": 2, "sequence": 4}, "hybrid": {"data": 1, "sequence": 8}}


@pytest.mark.parametrize("attention", list(CONTEXT_PARALLEL))
def test_context_parallel_packed_loss_equals_dense_on_8_devices(corpus, attention):
  assert jax.device_count() == 8
  batch = PackedBatch(**{k: jnp.asarray(v) for k, v in _packed_batch(corpus).items()})
  assert int(jnp.max(batch.segment_ids)) >= 3          # several documents per row
  dense_cfg = _tiny_decoder()
  params = build.init_params("qwen2", dense_cfg, jax.random.key(0))
  dense = build.build("qwen2", dense_cfg)
  loss, grads = jax.jit(jax.value_and_grad(lambda p: lm_loss_fn(dense, p, batch)[0]))(params)

  ring_cfg = _tiny_decoder(attention)
  mesh = mesh_lib.make_mesh({"fsdp": 1, "tensor": 1, **CONTEXT_PARALLEL[attention]})
  specs = mesh_lib.param_specs(build.logical_specs("qwen2", ring_cfg), build.abstract_params("qwen2", ring_cfg), mesh)
  p_sh = mesh_lib.shardings(specs, mesh)
  b_sh = jax.tree.map(lambda _: NamedSharding(mesh, mesh_lib.batch_spec(mesh)), batch)
  ring = build.build("qwen2", ring_cfg)
  with mesh_lib.activate(mesh):
    step = jax.jit(jax.value_and_grad(lambda p, b: lm_loss_fn(ring, p, b)[0]),
                   in_shardings=(p_sh, b_sh), out_shardings=(None, p_sh))
    loss_r, grads_r = step(jax.device_put(params, p_sh), jax.device_put(batch, b_sh))
  # The dense reference masks by segment explicitly: a float64 check of the mask itself is below.
  assert rel_err(loss_r, loss) < 1e-5
  assert tree_rel_err(grads_r, grads) < 1e-5


@pytest.mark.parametrize("attention", ["xla", "ring"])
def test_no_token_attends_across_a_document_boundary(corpus, attention):
  """Changing one document's tokens changes nothing at any other document's positions (and
  does change its own later positions): with the dense kernel and with ring attention."""
  batch = {k: np.array(v) for k, v in _packed_batch(corpus, seq_len=64, batch=2).items()}
  seg = batch["segment_ids"][0]
  first = seg == seg[0]
  assert first.sum() >= 4 and (seg != seg[0]).any()
  cfg = _tiny_decoder(attention)
  model = build.build("qwen2", cfg)
  params = build.init_params("qwen2", _tiny_decoder(), jax.random.key(0))
  changed = dict(batch, input_ids=batch["input_ids"].copy())
  changed["input_ids"][0, np.flatnonzero(first)[:2]] = (changed["input_ids"][0, np.flatnonzero(first)[:2]] + 7) % 300

  def logits(b):
    return np.asarray(jit_apply(model, params, jnp.asarray(b["input_ids"]),
                                  positions=jnp.asarray(b["positions"]), segment_ids=jnp.asarray(b["segment_ids"]))[0])
  if attention == "ring":
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "sequence": 4})
    with mesh_lib.activate(mesh):
      a, b = logits(batch), logits(changed)
  else:
    a, b = logits(batch), logits(changed)
  others = ~first
  np.testing.assert_array_equal(a[0, others], b[0, others])      # bit-identical elsewhere
  np.testing.assert_array_equal(a[1], b[1])
  assert np.abs(a[0, first][2:] - b[0, first][2:]).max() > 1e-3     # its own later tokens see it


def test_context_extension_stage_schedule_and_init_llm(corpus, tmp_path):
  from hourjax.convert.io import load_params, read_meta
  from hourjax.train import program as program_lib
  from hourjax.train.stage import run_stage
  overrides = [f"data.documents={corpus['patterns']}", f"data.tokenizer={corpus['tok']}",
               "train.context_schedule=((3, 64), (2, 128))", "data.batch_size=2", "train.checkpoint_every=2",
               "model.llm.attention=ring", "mesh.fsdp=2", "mesh.sequence=4"]
  run = load(CONFIG + ":tiny,stage=context_extension", overrides)
  out = run_stage(run, str(tmp_path / "ctx"))
  assert [p["seq_len"] for p in out["phases"]] == [64, 128] and not out["preempted"]
  assert [p["last_step"] for p in out["phases"]] == [3, 2]
  metrics = [json.loads(l) for l in open(tmp_path / "ctx" / "phase1_128" / "metrics.jsonl")]
  assert metrics[0]["step"] == 1 and np.isfinite(metrics[-1]["loss"])
  meta = read_meta(str(tmp_path / "ctx" / "params"))
  assert meta["kind"] == "qwen2" and meta["config"]["rope_theta"] == 1e9
  final = load_params(str(tmp_path / "ctx" / "params"))
  phase1 = load_params(str(tmp_path / "ctx" / "phase1_128" / "params"))
  assert tree_rel_err(final, phase1) == 0
  # Re-running finds both phases finished.
  again = run_stage(run, str(tmp_path / "ctx"))
  assert [p.get("skipped") for p in again["phases"]] == ["finished earlier"] * 2
  # The extended decoder initialises a video stage's LLM (theta 1e9 in the ProLongVid stages).
  video = load(CONFIG + ":tiny,stage=1,model=hour_llava", [f"train.init_llm={tmp_path / 'ctx' / 'params'}"])
  program = program_lib.build(video)
  with mesh_lib.activate(program.mesh):
    params = program.initial_params(video)
  assert tree_rel_err(params["llm"], final) == 0
  assert set(params) == {"vision", "projector", "image_newline", "memaug", "llm"}


def test_per_source_length_upsampling_keeps_each_sources_share(tmp_path):
  """Fu et al. 2024: within a source, long documents are drawn `factor` times as often as short
  ones; across sources, each keeps its share of the corpus' bytes."""
  from hourjax.data.text import document_stream
  rng = np.random.default_rng(0)
  books = [("long " * 400 + f"b{i}") if i % 2 else f"short b{i}" for i in range(10)]      # 5 long, 5 short
  web = [f"w{i} " + "x" * int(rng.integers(5, 60)) for i in range(30)]                   # all short
  for name, docs in (("books", books), ("web", web)):
    with open(tmp_path / f"{name}.jsonl", "w") as f:
      f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
  patterns = [str(tmp_path / "books.jsonl"), str(tmp_path / "web.jsonl")]
  size = {d: len(json.dumps({"text": d})) + 1 for d in books + web}      # a JSONL line's bytes
  stream = document_stream(patterns, seed=0, long_bytes=1000, factor=3)
  drawn = [stream[i] for i in range(40 * 60)]
  counts = {d: drawn.count(d) for d in books + web}
  long_rate = np.mean([counts[d] for d in books if size[d] >= 1000])
  short_rate = np.mean([counts[d] for d in books if size[d] < 1000])
  assert abs(long_rate / short_rate - 3) < 0.1
  share = lambda docs, weights: sum(weights[d] * size[d] for d in docs) / sum(weights[d] * size[d] for d in books + web)
  original = share(books, dict.fromkeys(books + web, 1))
  assert abs(share(books, counts) / original - 1) < 0.02
  # factor 1 (the tiny preset's default) is the plain shuffled stream: every document once per epoch
  plain = document_stream(patterns, seed=0, epochs=1)
  assert sorted(plain[i] for i in range(len(plain))) == sorted(books + web)


def test_continuous_packing_positions_continue_across_documents(corpus):
  """EasyContext's packing: one segment per row, positions 0..L-1, only the row's first token
  unpredicted (documents are separated by their EOS alone)."""
  from hourjax.data.text import dataset
  ds = dataset(corpus["patterns"], corpus["tok"], seq_len=64, batch_size=2, seed=0, packing="continuous")
  batch, _ = next(iter(ds))
  assert (np.asarray(batch.positions) == np.arange(64)).all()
  assert (np.asarray(batch.segment_ids) == 1).all()
  labels = np.asarray(batch.labels)
  assert (labels[:, 0] == IGNORE_INDEX).all() and (labels[:, 1:] == np.asarray(batch.input_ids)[:, 1:]).all()
  with pytest.raises(ValueError, match="packing="):
    dataset(corpus["patterns"], corpus["tok"], seq_len=64, batch_size=2, seed=0, packing="ragged")
