"""VideoMarathon's construction pipeline end to end over real HTTP: synthetic mp4 videos written
by a real encoder -> a scripted OpenAI-compatible server on localhost (fixed answers, some of
them malformed on purpose, to exercise the validation paths) -> annotations the training
pipeline reads (sources, group_qa, the real Qwen2 chat template)."""
import collections
import concurrent.futures
import hashlib
import http.server
import importlib.util
import json
import re
import threading
import time

import numpy as np
import pytest

from chat_endpoint import ScriptedChat
from hourjax.annotate import tasks
from hourjax.annotate import videomarathon as vm
from hourjax.data import chat, sources
from hourjax.data import video as video_lib
from hourjax.endpoint import ChatClient

SECONDS = 30


class Script(ScriptedChat):
  """Answers each stage from its prompt. Malformed on purpose: the first event split of every
  video (not JSON), every "scene" QA (an answer letter outside its options), and for a video
  of 12 s, events past its end."""
  calls: collections.Counter = collections.Counter()
  usage = {"prompt_tokens": 10, "completion_tokens": 5}

  def do_POST(self):
    body = self.request_body()
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else content[-1]["text"]
    images = [] if isinstance(content, str) else [part["image_url"]["url"] for part in content[:-1]]
    Script.calls[text] += 1
    self.send_chat(json.dumps(self.answer(text, images)) if not self.garbage(text) else "Sure! Here are the events:")

  def garbage(self, text):
    return "Split the video into events" in text and Script.calls[text] % 2 == 1

  def answer(self, text, images):
    if "Describe the clip" in text:
      assert images
      # Captions name what the frames hold, so each video's later prompts are its own (the
      # malformed-answer schedule is kept per prompt and must not be shared by two videos).
      start = re.search(r"from (\d\d:\d\d:\d\d)", text).group(1)
      seen = hashlib.sha1("".join(images).encode()).hexdigest()[:8]
      return {k: f"{k} of the clip at {start} (frames {seen})" for k in tasks.PERSPECTIVES}
    if "Split the video into events" in text:
      duration = float(re.search(r"lasts (\d+) seconds", text).group(1))
      end = duration * 3 if duration < 20 else duration           # the short video: out of range
      return {"events": [{"start": 0, "end": end / 3, "title": "a square appears"},
                         {"start": end / 3, "end": 2 * end / 3, "title": "it crosses"},
                         {"start": 2 * end / 3, "end": end, "title": "it leaves"}]}
    if "Summarise one event" in text:
      return {"summary": "the square moves right " + re.search(r'"([^"]+)"', text).group(1)}
    if "consists of these events" in text:
      return {"summary": "A coloured square crosses a dark frame from left to right."}
    topic = re.search(r'for the topic "(\w+)"', text).group(1)
    task = next(t for t in tasks.TOPICS[topic] if t != tasks.SUMMARY_TASK)
    letter = "F" if topic == "scene" else "B"
    return {"open_ended": [{"task": task, "question": f"What happens ({topic})?", "answer": "It moves."}],
            "multiple_choice": [{"task": task, "question": f"Which way ({topic})?",
                                 "options": ["up", "right", "left", "down"], "answer": letter}]}


@pytest.fixture(scope="module")
def server():
  Script.calls.clear()
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Script)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_port}/v1"
  httpd.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  root = tmp_path_factory.mktemp("media")
  paths = []
  for seed, (name, seconds) in enumerate((("a.mp4", SECONDS), ("b.mp4", SECONDS), ("short.mp4", 12))):
    video_lib.write_video(str(root / name), video_lib.moving_square(seconds, 2, size=64, seed=seed), fps=2)
    paths.append(str(root / name))
  (root / "broken.mp4").write_bytes(b"not a video")
  return root, paths + [str(root / "broken.mp4")]


def test_pipeline_writes_training_records_and_drops_what_is_invalid(server, videos, tmp_path, qwen2_tokenizer):
  root, paths = videos
  opts = vm.Options(clip_seconds=10, frames_per_clip=2, frame_size=64, concurrency=2)
  cache = str(tmp_path / "cache.jsonl")
  client = ChatClient(server, "scripted", cache=cache, backoff=0.01)
  records, stats = vm.annotate_videos(paths, client, client, opts, root=str(root), progress=False)
  # Two good videos; the short one's events lie outside it (re-asked, then dropped); the broken
  # file is unreadable; the "scene" topic's answer letter is never valid (re-asked, dropped).
  assert stats["videos"] == 2 and stats["videos_dropped_invalid_answers"] == 1
  assert stats["videos_unreadable"] == 1 and stats["qa_topics_dropped"] == 2
  # Re-asked: each good video's first event split (1 each), the short video's 3 attempts, and
  # the scene topic's 3 attempts per good video.
  assert client.stats["invalid"] == 1 + 1 + 3 + 2 * 3
  per_video = 1 + 2 * (len(tasks.TOPICS) - 1)            # the summary + 2 per surviving topic
  assert len(records) == 2 * per_video
  assert {r["video"] for r in records} == {"a.mp4", "b.mp4"}
  assert all(r["data_source"] == "custom" and r["duration"] == SECONDS for r in records)
  assert {r["topic"] for r in records} == set(tasks.TOPICS) - {"scene"}
  summary = [r for r in records if r["task"] == tasks.SUMMARY_TASK]
  assert len(summary) == 2 and "square crosses" in summary[0]["conversations"][1]["value"]
  mc = [r for r in records if r["question_type"] == "multiple-choice"]
  assert all(r["conversations"][1]["value"] in "ABCD" and "\nB. right\n" in r["conversations"][0]["value"]
             for r in mc)

  # The training pipeline reads them unchanged: the file, QA grouping, the real chat template.
  path = tmp_path / "videomarathon.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  read = sources.read_annotations(str(path))
  grouped = sources.group_qa(read, 5)
  assert len(grouped) == 2 * -(-per_video // 5) and all(len(g["conversations"]) <= 10 for g in grouped)
  tok = chat.load_tokenizer(qwen2_tokenizer)
  ids, labels = chat.tokenize_conversation(tok, grouped[0]["conversations"], has_image=True)
  assert (ids < 0).sum() == 1 and (labels != -100).sum() > 0

  # A rerun asks nothing: every valid answer is in the cache, invalid ones were never written.
  asked = sum(Script.calls.values())
  again = ChatClient(server, "scripted", cache=cache, backoff=0.01)
  records2, _ = vm.annotate_videos(paths[:2], again, again, opts, root=str(root), progress=False)
  assert records2 == records and again.stats["cached"] > 0
  assert sum(Script.calls.values()) - asked == again.stats["requests"] == 2 * 3   # scene, re-asked
  cached = [json.loads(line)["reply"] for line in open(cache)]
  assert not any(reply.startswith("Sure!") for reply in cached)


@pytest.mark.parametrize("text,error", [
    ("no json here", "no JSON object"),
    ('{"open_ended": [], "multiple_choice": [{"task": "Object Attribute", "question": "q", '
     '"options": ["a", "b"], "answer": "C"}]}', "not a letter among the 2 options"),
    ('{"open_ended": [{"task": "Scene Recognition", "question": "q", "answer": "a"}], '
     '"multiple_choice": []}', "task: expected one of"),
    ('{"open_ended": [{"task": "Object Attribute", "question": "", "answer": "a"}], '
     '"multiple_choice": []}', "question: expected a non-empty string"),
])
def test_malformed_qa_is_rejected_with_the_reason(text, error):
  with pytest.raises(ValueError, match=error):
    vm.parse_qa(text, "object")


def test_events_outside_the_video_or_overlapping_are_rejected():
  ok = vm.parse_events('```json\n{"events": [{"start": 0, "end": 5, "title": "a"}, '
                       '{"start": 5, "end": 10.4, "title": "b"}]}\n```', 10)
  assert [e["end"] for e in ok] == [5, 10]
  for events in ('[{"start": 0, "end": 15, "title": "a"}]', '[{"start": 4, "end": 2, "title": "a"}]',
                 '[{"start": 0, "end": 6, "title": "a"}, {"start": 2, "end": 8, "title": "b"}]',
                 '[{"start": "0", "end": 6, "title": "a"}]'):
    with pytest.raises(ValueError):
      vm.parse_events('{"events": %s}' % events, 10)
  assert np.isclose(ok[1]["start"], 5)


def test_command_writes_the_annotation_file(server, videos, tmp_path, capsys):
  from launch import annotate
  root, _ = videos
  out = tmp_path / "ann.jsonl"
  assert annotate.main(["--videos", str(root), "--out", str(out), "--captioner", server,
                        "--captioner-model", "scripted", "--cache", str(tmp_path / "cache"),
                        "--clip-seconds", "10", "--frames-per-clip", "2", "--frame-size", "64",
                        "--topics", "object", "event"]) == 0
  records = sources.read_annotations(str(out))
  assert {r["topic"] for r in records} == {"object", "event"} and len(records) == 2 * 5
  assert "10 QA records from 2 of 4 videos" in capsys.readouterr().out
  beam_out = tmp_path / "beam.jsonl"
  argv = ["--videos", str(root), "--out", str(beam_out), "--captioner", server, "--captioner-model", "scripted",
          "--cache", str(tmp_path / "cache"), "--clip-seconds", "10", "--frames-per-clip", "2",
          "--frame-size", "64", "--topics", "object", "event", "--direct_num_workers=1"]
  with pytest.raises(SystemExit):          # a Beam option without --beam
    annotate.main(argv)
  if importlib.util.find_spec("apache_beam") is None:      # the newest environment has no Beam
    with pytest.raises(SystemExit, match="--beam needs Apache Beam"):
      annotate.main(argv + ["--beam", "--runner=DirectRunner"])
    return
  assert annotate.main(argv + ["--beam", "--runner=DirectRunner"]) == 0
  assert sorted(map(json.dumps, sources.read_annotations(str(beam_out)))) == sorted(map(json.dumps, records))
  assert "10 QA records from 2 of 4 videos" in capsys.readouterr().out


def test_beam_runner_writes_what_one_machine_writes(server, videos, tmp_path):
  """The same pipeline on Apache Beam's DirectRunner (launch.annotate --beam): the same records
  and the same drop counts, as Beam counters."""
  pytest.importorskip("apache_beam", reason="Apache Beam is not installed here (the beam extra)")
  from hourjax.annotate import beam
  from hourjax.endpoint import Endpoint
  root, paths = videos
  opts = vm.Options(clip_seconds=10, frames_per_clip=2, frame_size=64, concurrency=2, topics=("object", "event"))
  client = ChatClient(server, "scripted", cache=str(tmp_path / "local.jsonl"), backoff=0.01)
  local, local_stats = vm.annotate_videos(paths, client, client, opts, root=str(root), progress=False)
  endpoint = Endpoint(server, "scripted", cache=str(tmp_path / "beam_cache.jsonl"))
  out = tmp_path / "beam.jsonl"
  stats = beam.run(paths, endpoint, endpoint, opts, out=str(out), root=str(root),
                   pipeline_args=["--runner=DirectRunner"])
  records = [json.loads(line) for line in open(out)]
  assert sorted(records, key=lambda r: r["id"]) == sorted(local, key=lambda r: r["id"]) and len(records) == 10
  assert stats == local_stats and stats["videos_unreadable"] == 1


def test_training_steps_on_the_generated_annotations(server, videos, tmp_path):
  """The records the pipeline writes (scripted server) train the tiny Hour-LLaVA through the real
  pipeline and loop (launch.train, stage 3, QA grouped by `group_qa`): every sample is read."""
  from hourjax.synthetic.tokenizer import save_tiny_tokenizer
  from launch import train
  root, paths = videos
  opts = vm.Options(clip_seconds=10, frames_per_clip=2, frame_size=64, topics=("object", "event"),
                    data_source=root.name)          # the records' media: {data root}/{data_source}/{video}
  client = ChatClient(server, "scripted", cache=str(tmp_path / "cache.jsonl"), backoff=0.01)
  records, _ = vm.annotate_videos(paths[:2], client, client, opts, root=str(root), progress=False)
  (tmp_path / "vm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  save_tiny_tokenizer(str(tmp_path / "tokenizer"))
  workdir = tmp_path / "run"
  assert train.main(["--config", "configs/hour_llava.py:tiny,stage=3", "--workdir", str(workdir),
                     f"data.root={root.parent}", f"data.sources=({{'annotations': '{tmp_path / 'vm.jsonl'}', "
                     "'group_qa': 5},)", f"data.read.tokenizer={tmp_path / 'tokenizer'}", "data.batch_size=4",
                     "mesh.fsdp=4", "mesh.sequence=2", "train.steps=2", "train.checkpoint_every=10"]) == 0
  summary = json.load(open(workdir / "summary.json"))
  assert summary["last_step"] == 2 and summary["data"]["skipped"] == 0 and np.isfinite(summary["last_loss"])
  assert summary["data"]["samples_video"] == 8        # 2 videos x 2 grouped samples, twice


class Slow(ScriptedChat):
  """Answers after a short wait, counting the requests in flight."""
  lock, now, most = threading.Lock(), 0, 0

  def do_POST(self):
    body = self.request_body()
    with Slow.lock:
      Slow.now += 1
      Slow.most = max(Slow.most, Slow.now)
    time.sleep(0.05)
    with Slow.lock:
      Slow.now -= 1
    self.send_chat(body["messages"][-1]["content"])


def test_client_keeps_its_concurrency_limit():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  try:
    client = ChatClient(f"http://127.0.0.1:{httpd.server_port}/v1", "slow", concurrency=2)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      replies = list(pool.map(lambda i: client.complete([{"role": "user", "content": str(i)}]), range(12)))
  finally:
    httpd.shutdown()
  assert replies == [str(i) for i in range(12)] and Slow.most == 2 and client.stats["requests"] == 12
