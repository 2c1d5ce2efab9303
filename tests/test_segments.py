"""ProLongVid's semantic segmentation (hourjax/annotate/segments.py): the paper's similarity
against a float64 loop over its formula, and scene boundaries recovered from a real mp4 (three
scenes, libx264) through SigLIP's image and text towers (random weights) and per-frame captions
as a captioner would give them."""
import base64
import collections
import http.server
import io
import json
import re
import threading

import jax
import numpy as np
import pytest

from chat_endpoint import ScriptedChat

from hourjax.annotate import segments
from hourjax.data import video
from hourjax.models import build
from hourjax.models.siglip import SiglipConfig, SiglipTextConfig

SIZE = 112
SCENES = ((0, 30, (200, 30, 30), "square", "a red room with a white square moving right"),
          (30, 55, (30, 30, 200), "circle", "a blue room with a white ball rolling"),
          (55, 90, (30, 160, 30), "stripes", "a green field with light stripes"))


def _frames(fps):
  out = []
  for start, end, colour, shape, _ in SCENES:
    for i in range((end - start) * fps):
      f = np.zeros((SIZE, SIZE, 3), np.uint8)
      f[:] = colour
      x = 10 + (i // fps * 3) % 60
      if shape == "square":
        f[40:60, x:x + 20] = 255
      elif shape == "circle":
        yy, xx = np.mgrid[:SIZE, :SIZE]
        f[(yy - 50) ** 2 + (xx - x - 10) ** 2 < 100] = 255
      else:
        f[::8] = 255 - np.asarray(colour)
      out.append(f)
  return np.stack(out)


def test_similarity_is_the_papers_formula():
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
  fi = image / np.linalg.norm(image, axis=1, keepdims=True)
  fc = text / np.linalg.norm(text, axis=1, keepdims=True)
  n = len(fi)
  want = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      s_ij = (fi[i] @ fi[j] + fi[i] @ fc[j]) / 2 + (2 - np.exp(abs((i - j) / n)))
      s_ji = (fi[j] @ fi[i] + fi[j] @ fc[i]) / 2 + (2 - np.exp(abs((j - i) / n)))
      want[i, j] = (s_ij + s_ji) / 2
  np.testing.assert_allclose(segments.similarity(image, text), want, rtol=1e-12, atol=1e-12)
  assert segments.segment(image, text, np.arange(7), duration=59.0) == [(0.0, 59.0)]   # under a minute


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, qwen2_tokenizer):
  """The three-scene mp4 (libx264, 2 FPS), a 20 s one-scene mp4, and `features` from SigLIP's two
  towers at random weights (texts tokenized by the real Qwen2 vocabulary, as a stand-in for
  SigLIP's own, padded to the tower's 16 positions)."""
  from hourjax.annotate import prolongvid
  from hourjax.data.chat import load_tokenizer
  root = tmp_path_factory.mktemp("scenes")
  frames = _frames(2)
  video.write_video(str(root / "scenes.mp4"), frames, fps=2, codec="libx264")
  video.write_video(str(root / "short.mp4"), frames[:40], fps=2, codec="libx264")
  tok = load_tokenizer(qwen2_tokenizer)

  def tokenize(texts):
    ids = np.zeros((len(texts), 16), np.int32)
    for i, t in enumerate(texts):
      e = tok.encode(t)[:16]
      ids[i, :len(e)] = e
    return ids
  vision = SiglipConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=SIZE,
                        patch_size=14, use_head=True)
  text = SiglipTextConfig(vocab_size=152000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          max_positions=16, projection_size=64)
  features = prolongvid.siglip_features(
      build.build("siglip", vision), build.init_params("siglip", vision, jax.random.key(0)),
      build.build("siglip_text", text), build.init_params("siglip_text", text, jax.random.key(1)), tokenize)
  return root, features


def test_scene_boundaries_of_a_real_video_within_two_seconds(scenes):
  root, features = scenes
  frames, duration = video.read_official_frames(str(root / "scenes.mp4"), SIZE)        # 1 FPS
  times = np.arange(len(frames)) + 0.5
  captions = [next(c for s, e, *_, c in SCENES if s <= t < e) for t in times]
  image, text = features(frames, captions)
  found = segments.segment(image, text, times, duration)
  assert len(found) == len(SCENES) and found[0][0] == 0 and found[-1][1] == duration
  for (start, end), (s, e, *_) in zip(found, SCENES):
    assert abs(start - s) <= 2 and abs(end - e) <= 2, found


class Captioner(ScriptedChat):
  """A scripted captioner and LLM: it names a frame's scene by its mean colour, and writes QA of
  the first task type each prompt offers, except for the one-segment strategy, whose task is
  always invalid (re-asked, then that strategy is dropped)."""
  asked: collections.Counter = collections.Counter()
  segment_prompts: list = []

  def do_POST(self):
    body = self.request_body()
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    images = [] if isinstance(content, str) else [p["image_url"]["url"] for p in content[:-1]]
    if "video frame" in text:
      Captioner.asked["frame"] += 1
      reply = {"caption": _scene_caption(images[0])}
    elif images:
      Captioner.asked["segment"] += 1
      reply = {"caption": "In this part, " + _scene_caption(images[0])}
    elif "dense caption" in text:
      reply = {"caption": "Three rooms follow each other: red, blue, then green."}
    else:
      task = re.search(r'- "([^"]+)":', text).group(1)
      if "One of its segments" in text:
        Captioner.segment_prompts.append(text)
        task = "Creative Writing"               # not a task of this strategy
      reply = {"qa": [{"task": task, "question": "What colour is the room first?", "answer": "Red."}]}
    self.send_chat(json.dumps(reply))


def _scene_caption(url):
  from PIL import Image
  rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).mean((0, 1))
  return SCENES[int(np.argmax([-np.abs(rgb - np.asarray(c)).sum() for *_, c, _, _ in SCENES]))][4]


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Captioner)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_port}/v1"
  httpd.shutdown()


def test_prolongvid_pipeline_segments_captions_and_asks_by_strategy(scenes, server, tmp_path):
  """ProLongVid's construction end to end over HTTP (a scripted server): the 90 s video is cut
  at its scenes, each segment captioned from its own frames, the dense caption written from
  them, QA asked by the three strategies; the 20 s video is captioned whole and asked once."""
  from hourjax.annotate import prolongvid
  from hourjax.data import sources
  from hourjax.endpoint import ChatClient
  root, features = scenes
  client = ChatClient(server, "scripted", backoff=0.01)
  opts = prolongvid.Options(frame_size=SIZE, frames_per_segment=2, concurrency=1)
  Captioner.asked.clear()
  records, stats = prolongvid.annotate_videos([str(root / "scenes.mp4"), str(root / "short.mp4")], client,
                                              client, features, opts, root=str(root), progress=False)
  assert stats["videos"] == 2 and stats["segments"] == 3 + 1 and stats["qa_strategies_dropped"] == 1
  # A caption per frame of the long video only (identical frames are asked once: the cache).
  assert Captioner.asked["segment"] == 3 + 1 and Captioner.asked["frame"] + client.stats["cached"] == 90
  long = [r for r in records if r["video"] == "scenes.mp4"]
  for (start, end), (s, e, *_) in zip(long[0]["segments"], SCENES):
    assert abs(start - s) <= 2 and abs(end - e) <= 2
  assert {(r["strategy"], r["task"]) for r in long} == {("global", "Video Summarization"),
                                                        ("segments", "Temporal Understanding")}
  assert len(Captioner.segment_prompts) == opts.attempts and Captioner.segment_prompts[0].count("] In this part") == 1
  short = [r for r in records if r["video"] == "short.mp4"]
  assert len(short) == 1 and short[0]["segments"] == [[0.0, 20.0]] and short[0]["strategy"] == "global"
  path = tmp_path / "plv.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  assert len(sources.read_annotations(str(path))) == len(records) == 3


def test_prolongvid_command_reads_a_siglip_checkpoint(scenes, server, tmp_path, capsys):
  """launch.annotate --pipeline prolongvid with a SiglipModel checkpoint in transformers' layout
  (both towers converted) and its tokenizer directory."""
  from conftest import needs_torch
  needs_torch()
  import hf_models
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  from launch import annotate
  root, _ = scenes
  hf_models.siglip_pair(tmp_path / "siglip", vocab=400)
  save_tiny_tokenizer(str(tmp_path / "siglip"))
  out = tmp_path / "plv.jsonl"
  assert annotate.main(["--pipeline", "prolongvid", "--siglip", str(tmp_path / "siglip"), "--videos", str(root),
                        "--out", str(out), "--captioner", server, "--captioner-model", "scripted",
                        "--cache", str(tmp_path / "cache"), "--frame-size", "56", "--frames-per-segment", "2"]) == 0
  records = [json.loads(line) for line in open(out)]
  assert {r["video"] for r in records} == {"scenes.mp4", "short.mp4"}
  assert "QA records from 2 of 2 videos" in capsys.readouterr().out
  with pytest.raises(SystemExit):           # a VideoMarathon option for the ProLongVid pipeline
    annotate.main(["--pipeline", "prolongvid", "--siglip", str(tmp_path / "siglip"), "--videos", str(root),
                   "--out", str(out), "--captioner", server, "--captioner-model", "scripted", "--clip-seconds", "5"])
