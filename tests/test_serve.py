"""launch.serve over real HTTP on localhost, driven by the `openai` client: a tiny Hour-LLaVA
checkpoint of the real Qwen2 vocabulary. Greedy answers equal `generate.generate` (the on-device
decoding loop, itself tested against a full recompute) on independently built prompts, for
text, a video file written by a real encoder and an image; streaming equals non-streaming;
concurrent requests are batched and answer as they do alone; structured output validates
against its schema (jsonschema) at temperature 1; bad requests get OpenAI error bodies and the
server keeps serving."""
import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import urllib.error
import urllib.request

import jax
import jsonschema
import numpy as np
import openai
import pytest
from PIL import Image

from conftest import QWEN_VOCAB, tiny_model
from hourjax.data import anyres, chat, video
from hourjax.data.batching import Buckets, collate
from hourjax.infer.encode import video_features
from hourjax.infer.generate import Sampling, generate, prompt_ids
from hourjax.infer.messages import read_prompt

MAX_TOKENS = 32    # a request's default here
LIMIT = 64         # the server's largest max_tokens


@pytest.fixture(scope="module")
def served(tmp_path_factory, qwen2_tokenizer):
  from hourjax.convert.io import save_params
  from hourjax.infer.server import Background
  from hourjax.models import build
  from launch import serve
  root = tmp_path_factory.mktemp("serve")
  cfg = tiny_model()
  cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=QWEN_VOCAB))
  save_params(str(root / "hj-tiny"), build.init_params("hour_llava", cfg, jax.random.key(0)), "hour_llava", cfg)
  frames = video.moving_square(12, 4, size=64, seed=1)
  video.write_video(str(root / "clip.mp4"), frames, 4, codec="libx264")
  a = serve.parser().parse_args(["--params", str(root / "hj-tiny"), "--tokenizer", qwen2_tokenizer,
                                 "--text-buckets", "128,512", "--frame-buckets", "16", "--min-frames", "8",
                                 "--max-tokens", str(LIMIT), "--max-batch", "4", "--batch-wait-ms", "150",
                                 "--deterministic"])
  app, engine = serve.build(a)
  with Background(app) as url:
    yield {"url": url, "engine": engine, "loaded": engine.loaded, "root": root,
           "client": openai.OpenAI(base_url=url, api_key="none", max_retries=0)}
  engine.close()


def _ask(served, content, **kw):
  kw = {"max_tokens": MAX_TOKENS, "temperature": 0, **kw}
  return served["client"].chat.completions.create(model="hj-tiny", messages=[{"role": "user", "content": content}],
                                                  **kw)


def _reference(served, sample, modality="video", n=MAX_TOKENS):
  """The greedy answer of `generate.generate` for one prompt, and how many tokens it took."""
  loaded = served["loaded"]
  batch = collate([sample], loaded.cfg, Buckets(frames=(16,), text=(128,)), modality=modality)
  tokens, length = generate(loaded.model, loaded.params, batch, jax.random.key(0), Sampling(max_new_tokens=n),
                            loaded.tokenizer.stop_ids)
  return loaded.tokenizer.decode(tokens[0, :length[0]].tolist()), int(length[0])


def _text_sample(tok, question):
  ids = chat.generation_prompt(tok, [{"from": "human", "value": question}], has_image=False)
  return {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32)}


def test_models_and_a_greedy_text_answer(served):
  assert [m.id for m in served["client"].models.list().data] == ["hj-tiny"]
  assert served["client"].models.retrieve("hj-tiny").owned_by == "hourjax"
  with pytest.raises(openai.NotFoundError):
    served["client"].models.retrieve("gpt-4o")
  tok = served["loaded"].tokenizer
  r = _ask(served, "Hello, who are you?")
  sample = _text_sample(tok, "Hello, who are you?")
  text, n = _reference(served, sample)
  assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
  assert r.usage.prompt_tokens == len(sample["input_ids"]) and r.usage.completion_tokens == n
  assert r.choices[0].finish_reason == ("length" if n == MAX_TOKENS else "stop")


def test_streaming_equals_the_whole_answer(served):
  whole = _ask(served, "Name three colours.").choices[0].message.content
  chunks = list(_ask(served, "Name three colours.", stream=True, stream_options={"include_usage": True}))
  deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
  assert chunks[0].choices[0].delta.role == "assistant" and len(deltas) > 3
  assert "".join(deltas) == whole
  assert chunks[-2].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.total_tokens > 0


def test_a_video_file_is_read_by_the_official_rule(served):
  loaded, path = served["loaded"], str(served["root"] / "clip.mp4")
  q = "Where does the square go?"
  r = _ask(served, [{"type": "video_url", "video_url": {"url": f"file://{path}"}}, {"type": "text", "text": q}])
  info = video.probe(path)
  indices = video.official_frame_indices(info.frames, info.fps, min_frames=8)
  ids = prompt_ids(loaded.tokenizer, q, info.duration, len(indices))     # as launch.evaluate forms it
  features = video_features(loaded.model, loaded.params, path, indices, loaded.cfg.vision.image_size)
  sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "features": features}
  assert r.choices[0].message.content == _reference(served, sample)[0]
  assert r.usage.prompt_tokens > len(ids)          # the visual tokens count as prompt tokens


def test_images_one_as_anyres_crops_several_as_frames(served):
  loaded = served["loaded"]
  size = loaded.cfg.vision.image_size
  pictures = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), np.uint8) for i in range(3)]
  urls = []
  for p in pictures:
    buf = io.BytesIO()
    Image.fromarray(p).save(buf, format="PNG")
    urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
  q = "What is in the picture?"
  r = _ask(served, [{"type": "image_url", "image_url": {"url": urls[0]}}, {"type": "text", "text": q}])
  ids = chat.generation_prompt(loaded.tokenizer, chat.with_placeholder([{"from": "human", "value": q}]))
  pixels, images = anyres.crops([Image.fromarray(pictures[0])], size)      # as the training pipeline reads it
  assert len(pixels) == 2                                                     # the base crop and a 1x1 grid
  sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "pixels": pixels, "images": images}
  assert r.choices[0].message.content == _reference(served, sample, "image")[0]

  parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls] + [{"type": "text", "text": q}]
  prompt = read_prompt(loaded, [{"role": "user", "content": parts}])
  assert prompt.modality == "video" and prompt.sample["features"].shape[0] == 3
  assert "The video lasts for 3.00 seconds, and 3 frames" in loaded.tokenizer.decode(prompt.sample["input_ids"][
      prompt.sample["input_ids"] >= 0])
  assert _ask(served, parts).choices[0].finish_reason in ("stop", "length")


def test_concurrent_requests_are_batched_and_answer_as_alone(served):
  questions = [f"Question number {i}: {'why ' * i}?" for i in range(4)]
  alone = [_ask(served, q).choices[0].message.content for q in questions]
  before = served["engine"].stats["batches"]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = list(pool.map(lambda q: _ask(served, q).choices[0].message.content, questions))
  assert together == alone
  assert served["engine"].stats["batches"] - before < 4 and served["engine"].stats["largest_batch"] > 1


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "count", "note", "flags"],
          "properties": {"colour": {"enum": ["red", "green", "blue"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 9},
                         "note": {"type": "string", "maxLength": 8},
                         "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}}}


def test_structured_output_follows_the_schema_when_sampling(served):
  fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    replies = list(pool.map(lambda s: _ask(served, "Describe the video as JSON.", temperature=1.0, seed=s,
                                           max_tokens=LIMIT, response_format=fmt), range(4)))
  values = []
  for r in replies:
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    values.append(json.loads(r.choices[0].message.content))
    jsonschema.validate(values[-1], SCHEMA)
  assert len({json.dumps(v, sort_keys=True) for v in values}) > 1        # sampled, not one fixed answer
  anything = _ask(served, "JSON please.", temperature=1.0, seed=0, response_format={"type": "json_object"})
  assert isinstance(json.loads(anything.choices[0].message.content), dict)
  free = [_ask(served, "Describe the video as JSON.", temperature=1.0, seed=s).choices[0].message.content
          for s in range(2)]
  with pytest.raises(ValueError):      # the same model unconstrained: not JSON
    [json.loads(f) for f in free]


def test_seed_stop_and_max_tokens(served):
  kw = dict(temperature=1.0, top_p=0.9, seed=7)
  a, b = _ask(served, "Tell a story.", **kw), _ask(served, "Tell a story.", **kw)
  assert a.choices[0].message.content == b.choices[0].message.content
  other = _ask(served, "Tell a story.", temperature=1.0, seed=8)
  assert other.choices[0].message.content != a.choices[0].message.content
  whole = _ask(served, "Count to ten.").choices[0].message.content
  stop = whole[len(whole) // 2:len(whole) // 2 + 3]
  cut = _ask(served, "Count to ten.", stop=[stop])
  assert cut.choices[0].message.content == whole[:whole.index(stop)] and cut.choices[0].finish_reason == "stop"
  short = _ask(served, "Count to ten.", max_tokens=5)
  assert short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"
  assert whole.startswith(short.choices[0].message.content)


def test_annotation_captions_from_launch_serve(served):
  """VideoMarathon's clip captioning (frames as image parts) against launch.serve: the tiny random
  model, constrained to the stage's schema, gives valid six-perspective captions at the first
  asking for every clip (the other stages' validation paths run against a scripted server in
  test_annotate.py)."""
  from hourjax.annotate import tasks
  from hourjax.annotate import videomarathon as vm
  from hourjax.endpoint import ChatClient
  opts = vm.Options(clip_seconds=4, frames_per_clip=2, frame_size=64, max_text_chars=3)
  client = ChatClient(served["url"], "hj-tiny", backoff=0.01)
  clips, _ = vm.clips_of(str(served["root"] / "clip.mp4"), opts)
  vm.caption_clips(clips, client, opts)
  assert client.stats["invalid"] == 0 and client.stats["requests"] == len(clips) == 3
  assert all(set(c["caption"]) == set(tasks.PERSPECTIVES) and all(c["caption"].values()) for c in clips)


def _post(url, data: bytes):
  request = urllib.request.Request(url + "/chat/completions", data=data, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_bad_requests_get_openai_errors_and_the_server_goes_on(served):
  client, text = served["client"], [{"role": "user", "content": "hi"}]
  with pytest.raises(openai.NotFoundError) as e:
    client.chat.completions.create(model="gpt-4o", messages=text)
  assert e.value.body["code"] == "model_not_found"
  missing = os.path.join(str(served["root"]), "missing.mp4")
  with pytest.raises(openai.BadRequestError) as e:
    _ask(served, [{"type": "video_url", "video_url": {"url": missing}}, {"type": "text", "text": "?"}])
  assert missing in e.value.body["message"] and e.value.body["type"] == "invalid_request_error"
  not_a_video = served["root"] / "notes.mp4"
  not_a_video.write_text("not a video")
  with pytest.raises(openai.BadRequestError, match="cannot open video"):
    _ask(served, [{"type": "video_url", "video_url": {"url": str(not_a_video)}}, {"type": "text", "text": "?"}])
  bad = [dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wrong"}}}),
         dict(n=2), dict(temperature=5), dict(max_tokens=LIMIT + 1), dict(stop=["a", "b", "c", "d", "e"])]
  for kw in bad:
    with pytest.raises(openai.BadRequestError) as e:
      _ask(served, "hi", **kw)
    assert e.value.body["param"] in ("response_format", "n", "temperature", "max_tokens", "stop"), kw
  for messages in ([{"role": "assistant", "content": "hi"}], [{"role": "user", "content": [{"type": "audio"}]}], []):
    with pytest.raises(openai.BadRequestError):
      client.chat.completions.create(model="hj-tiny", messages=messages)
  status, body = _post(served["url"], b'{"model": "hj-tiny", "messages": [')
  assert status == 400 and "not valid JSON" in body["error"]["message"]
  status, body = _post(served["url"].replace("/v1", "/v2"), b"{}")
  assert status == 404 and "error" in body
  assert _ask(served, "Still there?").choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def served_prolongvid(served, qwen2_tokenizer):
  """A tiny ProLongVid checkpoint (the real Qwen2 vocabulary) behind its own server."""
  from configs.prolongvid import get_config
  from hourjax.config import model_config
  from hourjax.convert.io import save_params
  from hourjax.infer.server import Background
  from hourjax.models import build
  from launch import serve
  cfg = model_config(get_config("tiny,stage=3").model)
  cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=QWEN_VOCAB))
  path = str(served["root"] / "hj-plv")
  save_params(path, build.init_params("prolongvid", cfg, jax.random.key(0)), "prolongvid", cfg)
  a = serve.parser().parse_args(["--params", path, "--tokenizer", qwen2_tokenizer, "--model-name", "hj-tiny",
                                 "--text-buckets", "128",
                                 "--frame-buckets", "16", "--fixed-frames", "8", "--max-tokens", str(LIMIT),
                                 "--max-batch", "2", "--batch-wait-ms", "10"])
  app, engine = serve.build(a)
  with Background(app) as url:
    yield {**served, "engine": engine, "loaded": engine.loaded,
           "client": openai.OpenAI(base_url=url, api_key="none", max_retries=0)}
  engine.close()


def test_a_prolongvid_checkpoint_reads_its_own_way(served_prolongvid):
  """ProLongVid's model behind the same server: a video by 8 frames by linspace and no time
  instruction, one image as anyres crops, two images as one multi-image sample, each answer
  equal to `generate` on a prompt built independently of the server's message reader."""
  from hourjax.data import anyres
  s = served_prolongvid
  loaded, path = s["loaded"], str(s["root"] / "clip.mp4")
  tok, size, q = loaded.tokenizer, loaded.cfg.vision.image_size, "What is shown?"
  assert type(loaded.model).__name__ == "ProLongVid"
  r = _ask(s, [{"type": "video_url", "video_url": {"url": path}}, {"type": "text", "text": q}])
  indices = video.fixed_frame_indices(video.probe(path).frames, 8)
  ids = prompt_ids(tok, q, None, len(indices))
  features = video_features(loaded.model, loaded.params, path, indices, size)
  assert features.shape[1] == loaded.cfg.vision.num_patches         # unpooled: pooling follows the projector
  sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "features": features}
  assert r.choices[0].message.content == _reference(s, sample)[0]
  assert r.usage.prompt_tokens == len(ids) - 1 + 8 * loaded.cfg.tokens_per_frame()
  pictures = [np.random.default_rng(i).integers(0, 256, (150 + 40 * i, 90, 3), np.uint8) for i in range(2)]
  files = []
  for i, p in enumerate(pictures):
    files.append(str(s["root"] / f"picture{i}.png"))
    Image.fromarray(p).save(files[-1])
  for images in ([pictures[0]], pictures):
    parts = [{"type": "image_url", "image_url": {"url": f}} for f in files[:len(images)]]
    r = _ask(s, parts + [{"type": "text", "text": q}])
    turns = [{"from": "human", "value": "<image>\n" * len(images) + q}]
    ids = chat.generation_prompt(tok, chat.normalise_placeholders(turns))
    crops, rows = anyres.crops(images, size)
    assert (len(crops) > 2) == (len(images) == 1)      # one image is tiled, two are a crop each
    sample = {"input_ids": ids, "labels": np.full(len(ids), -100, np.int32), "pixels": crops, "images": rows}
    assert r.choices[0].message.content == _reference(s, sample, "image")[0]
