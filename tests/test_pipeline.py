"""The Grain pipeline: mixtures, every stream's batches, skip-and-count of bad input, exact resume,
per-process shares, the ArrayRecord form, global arrays, and preprocessing parity with the
official (PIL) SigLIP processor."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs.hour_llava import get_config
from hourjax.config import model_config
from hourjax.convert.io import write_safetensors
from hourjax.data import pipeline, video
from hourjax.data.batch import ImageBatch, TextBatch, VideoBatch
from hourjax.data.prepared import load_prepared, write_prepared
from hourjax.data.sources import Source, epoch_records, group_qa, select
from hourjax.synthetic.videos import write_dataset
from hourjax.data.video import decode_frames, probe, to_siglip
from hourjax.models import build
from hourjax.constants import IMAGE_TOKEN_INDEX
from hourjax.parallel import mesh as mesh_lib
from hourjax.train import feed, step
from hourjax.numerics import rel_err

from conftest import QWEN_VOCAB

RUN = get_config("tiny")
RUN.model.llm.vocab_size = QWEN_VOCAB      # the real Qwen2 vocabulary tokenizes every sample here
CFG = model_config(RUN.model)
Q = "What colour is the square in the video?"


def _conv(question=Q, answer="The square is red, then blue.", image=True):
  return [{"from": "human", "value": ("<image>\n" if image else "") + question},
          {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, qwen2_tokenizer):
  """Synthetic videos, cached features, images and text, with every kind of bad record, and the
  real Qwen2 tokenizer."""
  from PIL import Image
  root = str(tmp_path_factory.mktemp("data"))
  write_dataset(root, num_videos=4, seconds=(18, 30), fps=2, size=48, seed=1)
  videos = [json.loads(line) for line in open(os.path.join(root, "annotations.jsonl"))]
  with open(os.path.join(root, "synthetic", "corrupt.mp4"), "wb") as f:
    f.write(os.urandom(3000))
  open(os.path.join(root, "synthetic", "empty.mp4"), "wb").close()
  bad_videos = [{"id": "corrupt", "video": "corrupt.mp4", "data_source": "synthetic", "conversations": _conv()},
                {"id": "empty", "video": "empty.mp4", "data_source": "synthetic", "conversations": _conv()},
                {"id": "missing", "video": "gone.mp4", "data_source": "synthetic", "conversations": _conv()}]
  with open(os.path.join(root, "videos.json"), "w") as f:
    json.dump([{k: v for k, v in r.items() if k != "events"} for r in videos] + bad_videos, f)
  # Cached features (as launch/cache_features.py writes them) for two of the videos.
  rng = np.random.default_rng(0)
  g, c = CFG.pool_size ** 2, CFG.vision.hidden_size
  os.makedirs(os.path.join(root, "features", "synthetic"))
  for r, t, duration in ((videos[0], 40, 20.4), (videos[1], 12, 30.0)):
    write_safetensors(os.path.join(root, "features", "synthetic", r["video"][:-4] + ".safetensors"),
                      {"vid_feat": rng.normal(size=(t, g, c)).astype(np.float32)},
                      {"duration": f"{duration:.2f}"})
  with open(os.path.join(root, "features.jsonl"), "w") as f:
    for r in [dict(videos[0], id="f0"), dict(videos[1], id="f1"), dict(videos[2], id="no_features")]:
      f.write(json.dumps({k: v for k, v in r.items() if k != "events"}) + "\n")
  os.makedirs(os.path.join(root, "images"))
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 60, 3), np.uint8)).save(
        os.path.join(root, "images", f"im{i}.png"))
  open(os.path.join(root, "images", "broken.png"), "wb").write(b"not a png")
  images = [{"id": f"im{i}", "image": f"im{i}.png", "conversations": _conv("What is shown?", "Noise.")}
            for i in range(3)]
  images += [{"id": "broken", "image": "broken.png", "conversations": _conv()},
             {"id": "two_images", "image": ["im0.png", "im1.png"], "conversations": _conv()},
             {"id": "no_placeholder", "image": "im1.png", "conversations": _conv(image=False)},
             {"id": "two_placeholders", "image": "im1.png", "conversations": _conv("<image>\nTwice?")}]
  text = [{"id": f"t{i}", "conversations": _conv("How many circles appear?", "Three circles appear.", False)}
          for i in range(5)]
  text.append({"id": "long", "conversations": _conv("Three circles appear. " * 80, "Three.", False)})
  text.append({"id": "text_with_placeholder", "conversations": _conv()})
  for name, records in (("images.json", images), ("text.json", text)):
    with open(os.path.join(root, name), "w") as f:
      json.dump(records, f)
  os.symlink(qwen2_tokenizer, os.path.join(root, "tokenizer"))
  return root


def _data(root, **kw):
  data = ml_collections.ConfigDict(RUN.data.to_dict())
  data.root = root
  data.sources = [dict(annotations="videos.json"), dict(annotations="features.jsonl", features="features"),
                  dict(annotations="images.json", media="images"), dict(annotations="text.json")]
  data.read.tokenizer = os.path.join(root, "tokenizer")
  data.read.max_text_len = 128
  data.batch_size = 2
  data.buckets.text = (96, 128)
  for k, v in kw.items():
    node, *path = k.split(".")
    (data[node] if path else data)[path[0] if path else node] = v
  return data


def test_mixture_selection_and_weights(tmp_path):
  records = [{"id": i} for i in range(10)]
  assert [r["id"] for r in select(records, "first:30%", 0)] == [0, 1, 2]
  assert [r["id"] for r in select(records, "end:20%", 0)] == [8, 9]
  assert [r["id"] for r in select(records, "first:4", 0)] == [0, 1, 2, 3]
  rnd = select(records, "random:50%", 7)
  assert len(rnd) == 5 and rnd == select(records, "random:50%", 7) and rnd != records[:5]
  with pytest.raises(ValueError, match="sampling strategy"):
    Source("a.json", strategy="middle:5%")
  path = tmp_path / "a.jsonl"
  path.write_text("".join(json.dumps({"id": i, "conversations": []}) + "\n" for i in range(8)))
  for weight, n in ((1.0, 8), (2.0, 16), (0.5, 4), (1.5, 12)):
    got = epoch_records([Source("a.jsonl", weight=weight)], str(tmp_path), 0)["text"]
    assert len(got) == n and {r["id"] for r in got} == set(range(8) if weight >= 1 else {r["id"] for r in got})
  with pytest.raises(FileNotFoundError, match="missing.json"):
    epoch_records([Source("a.jsonl"), Source("missing.json")], str(tmp_path), 0)
  with pytest.raises(FileNotFoundError, match="media"):
    epoch_records([Source("a.jsonl", media="nowhere")], str(tmp_path), 0)


def test_group_qa():
  recs = [{"id": i, "video": f"v{i % 2}.mp4", "conversations": _conv(f"q{i}", f"a{i}")} for i in range(7)]
  grouped = group_qa(recs, 3)
  assert sorted(len(r["conversations"]) // 2 for r in grouped) == [1, 3, 3]
  for r in grouped:
    assert sum("<image>" in t["value"] for t in r["conversations"]) == 1
    assert r["conversations"][0]["value"].startswith("<image>")
    assert len({recs[int(i)]["video"] for i in r["id"].split("+")}) == 1


def _epoch(data, **kw):
  """Every (batch, meta) of one epoch, per stream."""
  ds = pipeline.from_config(data, CFG, **kw)
  return list(ds)


def test_streams_bad_input_and_static_shapes(data_root):
  it = iter(pipeline.from_config(_data(data_root), CFG))
  batches = [next(it) for _ in range(20)]       # more than an epoch of every stream
  streams = [m.stream for _, m in batches]
  assert set(streams) == {"video", "features", "image", "text"}
  skipped = {i: why for _, m in batches for i, why in m.skipped}
  assert set(skipped) >= {"corrupt", "empty", "missing", "broken", "two_images", "two_placeholders",
                          "no_features", "text_with_placeholder"}, skipped
  assert "1 <image> placeholders for 2 visual inputs" in skipped["two_images"]      # anyres: images per
  assert "2 <image> placeholders" in skipped["two_placeholders"]                    # placeholder
  assert "no_placeholder" not in skipped     # the official image sharding puts "<image>\n" first
  assert "gone.mp4" in skipped["missing"]
  assert any("long" in m.truncated for _, m in batches) or "long" in skipped
  seen = [i for _, m in batches for i in m.ids]
  assert not set(seen) & set(skipped)
  one_epoch = [i for _, m in _epoch(_data(data_root, epochs=1)) for i in m.ids]
  assert len(one_epoch) == len(set(one_epoch)) and set(one_epoch) <= set(seen)
  frames, text = set(RUN.data.buckets.frames), {96, 128}
  kinds = {"video": VideoBatch, "features": VideoBatch, "image": ImageBatch, "text": TextBatch}
  for b, m in batches:
    ids = b.input_ids
    assert type(b) is kinds[m.stream] and ids.shape[0] == 2 and ids.shape[1] in text
    assert ((ids == IMAGE_TOKEN_INDEX).sum(1) == (0 if m.stream == "text" else 1)).all()
    if m.stream in ("video", "features"):
      assert b.frames in frames and (b.features is None) == (m.stream == "video")
    if m.stream == "video":
      assert b.pixels.shape[2:] == (112, 112, 3) and b.pixels.dtype == np.uint8
  # Every batch kind runs through the training loss.
  model, params = build.build("hour_llava", CFG), build.init_params("hour_llava", CFG, jax.random.key(0))
  loss_fn = jax.jit(lambda b: step.loss_fn(model, params, b, jax.random.key(1)))
  for stream in ("video", "features", "image", "text"):
    b = next(b for b, m in batches if m.stream == stream)
    loss, aux = loss_fn(b)
    assert np.isfinite(loss) and aux["supervised_tokens"] > 0


def test_cached_feature_rule(data_root):
  """n = min(T, int(duration)) frames by linspace (spec §1.5), and the time instruction's N."""
  np.testing.assert_array_equal(video.cached_feature_indices(40, 20.4), np.linspace(0, 39, 20).astype(int))
  np.testing.assert_array_equal(video.cached_feature_indices(12, 30.0), np.arange(12))
  batches = _epoch(_data(data_root, epochs=1, sources=[dict(annotations="features.jsonl", features="features")]))
  assert sorted(b.features[i].any(-1).any(-1).sum() for b, _ in batches for i in range(2)) == [12, 20]


def test_resume_is_exact(data_root):
  data = _data(data_root)
  it = iter(pipeline.from_config(data, CFG))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = iter(pipeline.from_config(data, CFG))
  resumed.set_state(json.loads(json.dumps(state)))   # the state survives a JSON checkpoint
  for want in expected:
    got = next(resumed)
    assert got[1] == want[1]
    jax.tree.map(np.testing.assert_array_equal, got[0], want[0])
  other_seed = iter(pipeline.from_config(data, CFG, seed=1))
  assert [next(other_seed)[1].ids for _ in range(4)] != [m.ids for _, m in expected]


def test_processes_read_disjoint_shares(data_root):
  data = _data(data_root, epochs=1, batch_size=2, sources=[dict(annotations="text.json")])
  whole = {i for _, m in _epoch(data) for i in m.ids}
  shares = [{i for _, m in _epoch(data, process_index=p, process_count=2) for i in m.ids}
            for p in range(2)]
  assert not shares[0] & shares[1] and shares[0] | shares[1] <= whole and len(shares[0]) == len(shares[1])
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.from_config(_data(data_root, batch_size=3), CFG, process_count=2)


def test_prepared_arrayrecord_roundtrip(data_root, tmp_path):
  data = _data(data_root, epochs=1, batch_size=1)     # no incomplete batch is dropped
  streams = epoch_records([Source(**dict(s)) for s in data.sources], data_root, data.seed)
  path = write_prepared(streams, str(tmp_path))
  loaded = load_prepared(path)
  assert set(loaded) == set(streams)
  for name, records in streams.items():
    key = lambda r: json.dumps(r, sort_keys=True)
    assert sorted(map(key, (loaded[name][i] for i in range(len(loaded[name]))))) == sorted(map(key, records))
  from_sources = {i for _, m in _epoch(data) for i in m.ids}
  data.prepared = path
  assert {i for _, m in _epoch(data) for i in m.ids} == from_sources
  with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
    load_prepared(str(tmp_path / "nothing"))


def test_worker_processes_resume(data_root):
  """Through the Python API, with absl flags not parsed (no command ran): workers still start."""
  from absl import flags
  flags.FLAGS.unparse_flags()
  data = _data(data_root, workers=2,
               sources=[dict(annotations="text.json"), dict(annotations="images.json", media="images")])
  it = iter(pipeline.from_config(data, CFG))
  first = [next(it)[1].ids for _ in range(2)]
  state = it.get_state()
  expected = [next(it)[1].ids for _ in range(3)]
  it.close()
  again = iter(pipeline.from_config(data, CFG))
  assert [next(again)[1].ids for _ in range(2)] == first
  again.set_state(state)
  assert [next(again)[1].ids for _ in range(3)] == expected
  again.close()


def test_global_arrays_and_bucket_padding(data_root):
  """A batch padded to a larger bucket gives the same loss (every process may pad to the
  largest bucket drawn), and global arrays hold the host batch sharded over the batch axes."""
  data = _data(data_root, epochs=1, batch_size=2, sources=[dict(annotations="features.jsonl", features="features"),
                                                           dict(annotations="text.json")])
  batch = next(b for b, m in _epoch(data) if m.stream == "features")
  run = get_config("tiny")
  run.model.llm.vocab_size = QWEN_VOCAB
  run.model.forgetting.spatial = "uniform"     # random forgetting draws depend on the padded shape
  cfg = model_config(run.model)
  model, params = build.build("hour_llava", cfg), build.init_params("hour_llava", cfg, jax.random.key(0))
  loss = jax.jit(lambda b: step.loss_fn(model, params, b, jax.random.key(3))[0])
  padded = feed.pad_batch(batch, CFG, 64, 128)
  assert padded.features.shape[1] == 64 and padded.input_ids.shape[1] == 128
  assert rel_err(loss(padded), loss(batch)) < 1e-5
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "sequence": 4})
  g = feed.to_global(batch, mesh, CFG)
  assert type(g) is type(batch) and g.features.sharding.spec[0] in ("data", ("data",))
  assert g.features.addressable_shards[0].data.shape[0] == 1
  np.testing.assert_array_equal(np.asarray(g.input_ids), batch.input_ids)
  np.testing.assert_array_equal(np.asarray(g.layout.memory_frames), batch.layout.memory_frames)


def test_pil_resize_matches_the_official_processor(data_root):
  """decode_frames(resample="pil") + to_siglip equals transformers' PIL SigLIP processor on the
  full-size frames; the swscale path stays close."""
  import av
  from transformers import SiglipImageProcessorPil
  path = os.path.join(data_root, "synthetic", "synth_00000.mp4")
  idx = np.array([0, 5, 11])
  with av.open(path) as c:
    full = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in idx]
  proc = SiglipImageProcessorPil(size={"height": 112, "width": 112})
  ref = np.asarray(proc(images=full, return_tensors="np")["pixel_values"]).transpose(0, 2, 3, 1)
  ours = to_siglip(decode_frames(path, idx, 112, resample="pil"))
  assert rel_err(ours, ref) < 1e-6
  assert rel_err(to_siglip(decode_frames(path, idx, 112)), ref) < 0.05
  assert probe(path).frames > idx[-1]


def test_two_processes_make_one_global_batch(data_root, tmp_path):
  """Two local processes read disjoint shares whose buckets differ; both pad to the larger
  bucket, and the global arrays hold both shares."""
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  here = os.path.dirname(__file__)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.path.dirname(here)]))
  procs = [subprocess.Popen([sys.executable, os.path.join(here, "multihost_data.py"), data_root, str(port),
                             str(i), str(tmp_path / f"{i}.json")], env=env) for i in range(2)]
  assert [p.wait(timeout=300) for p in procs] == [0, 0]
  reports = [json.load(open(tmp_path / f"{i}.json")) for i in range(2)]
  for a, b in zip(*reports):
    assert (a["frames"], a["text"], a["global_ids_sum"]) == (b["frames"], b["text"], b["global_ids_sum"])
    assert a["frames"] == max(a["local_frames"], b["local_frames"])
  assert any(a["local_frames"] != b["local_frames"] for a, b in zip(*reports))


def test_uint8_pixels_are_scaled_on_device():
  """Batches carry uint8 frames; the model's scaling equals the host-side to_siglip."""
  frames = np.random.default_rng(0).integers(0, 256, (1, 3, 112, 112, 3), np.uint8)
  model, params = build.build("hour_llava", CFG), build.init_params("hour_llava", CFG, jax.random.key(0))
  enc = lambda x: model.apply({"params": params}, x, pool=True, method="encode_frames")
  assert rel_err(enc(frames), enc(to_siglip(frames))) < 1e-6


def test_unusable_tokenizer_fails_at_start_up(data_root, tmp_path):
  """A tokenizer that cannot give the official format stops the run before any sample is read,
  saying why, instead of skipping every sample."""
  import tokenizers
  import transformers
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
  transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(str(tmp_path))
  data = _data(data_root)
  data.read.tokenizer = str(tmp_path)
  with pytest.raises(ValueError, match=r"<\|im_start\|> is not one token"):
    pipeline.from_config(data, CFG)
