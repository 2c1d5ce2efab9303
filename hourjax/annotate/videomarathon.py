"""VideoMarathon's data construction (paper §3, App. A.1) against any OpenAI-compatible endpoint.

  clips -> clip captions (six perspectives, a video/image LMM) -> events (start, end) -> event
  summaries (the event's clip captions + neighbouring events) -> a global summary -> QA per
  topic (open-ended and multiple-choice over the 22 tasks) -> LLaVA-style training records

    from hourjax.annotate import videomarathon as vm
    from hourjax.endpoint import ChatClient
    captioner = ChatClient("http://localhost:8000/v1", "Qwen2-VL-7B-Instruct", cache="cache/cap.jsonl")
    llm = ChatClient("https://api.deepseek.com/v1", "deepseek-chat", key, cache="cache/llm.jsonl")
    records, stats = vm.annotate_videos(["videos/a.mp4"], captioner, llm, vm.Options(), root="videos")

Every stage asks for JSON and validates it (`parse_*`): a malformed answer (not JSON, wrong
schema, a missing field, an answer letter outside the options, times outside the video) raises
ValueError, which the client re-asks a bounded number of times; an answer still invalid is
counted in `stats` and dropped, never written. The client's on-disk cache makes a rerun ask
nothing twice (`hourjax/endpoint.py`). Videos run concurrently (`Options.concurrency`).
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from hourjax.annotate import prompts
from hourjax.annotate.tasks import PERSPECTIVES, SUMMARY_TASK, TOPICS
from hourjax.data import video as video_lib
from hourjax.endpoint import EndpointError

LETTERS = "ABCDEFGH"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclasses.dataclass(frozen=True)
class Options:
  clip_seconds: float = 10.0      # fixed-length clips (the paper's captioner input)
  frames_per_clip: int = 4        # frames sent to the captioner per clip, evenly spaced
  frame_size: int = 384           # their side, pixels (square, as SigLIP sees them)
  min_events: int = 3             # the paper keeps videos with at least three events (0: all)
  qa_per_format: int = 3          # open-ended and multiple-choice pairs asked per topic
  topics: tuple[str, ...] = tuple(TOPICS)
  attempts: int = 3               # asks per stage before the answer is dropped
  concurrency: int = 4            # videos in flight
  data_source: str = "custom"     # the records' `data_source` (their sub-folder of the media root)
  # How each stage asks for its JSON: "json_schema" (the stage's schema as `response_format`:
  # vLLM, SGLang, OpenAI, launch.serve decode constrained to it), "json_object" (any JSON: e.g.
  # DeepSeek's API) or "none" (the prompt alone asks for it).
  response_format: str = "json_schema"
  max_text_chars: int = 0         # > 0: every free-text field's maxLength in the schemas (small models)

  def __post_init__(self):
    check_response_format(self.response_format)


# -- schemas: what each stage's answer must look like, as response_format ---------------------

def string_schema(opts: Options) -> dict:
  return {"type": "string", "minLength": 1, **({"maxLength": opts.max_text_chars} if opts.max_text_chars else {})}


def object_schema(properties: dict) -> dict:
  return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def caption_schema(opts: Options) -> dict:
  return object_schema({k: string_schema(opts) for k in PERSPECTIVES})


def events_schema(duration: float, opts: Options) -> dict:
  seconds = {"type": "number", "minimum": 0, "maximum": round(duration, 3)}
  event = object_schema({"start": seconds, "end": seconds, "title": string_schema(opts)})
  return object_schema({"events": {"type": "array", "items": event, "minItems": 1}})


def summary_schema(opts: Options) -> dict:
  return object_schema({"summary": string_schema(opts)})


def qa_schema(topic: str, opts: Options) -> dict:
  task = {"enum": sorted(set(TOPICS[topic]) - {SUMMARY_TASK})}
  open_ended = object_schema({"task": task, "question": string_schema(opts), "answer": string_schema(opts)})
  choice = object_schema({"task": task, "question": string_schema(opts),
                    "options": {"type": "array", "items": string_schema(opts), "minItems": 4, "maxItems": 4},
                    "answer": {"enum": list(LETTERS[:4])}})
  return object_schema({"open_ended": {"type": "array", "items": open_ended, "maxItems": opts.qa_per_format},
                  "multiple_choice": {"type": "array", "items": choice, "maxItems": opts.qa_per_format}})


def check_response_format(value: str) -> None:
  if value not in ("json_schema", "json_object", "none"):
    raise ValueError(f"response_format={value!r}: expected json_schema, json_object or none")


def response_format(name: str, schema: dict, opts: Options) -> dict:
  """The request parameter that asks for the stage's JSON (none with response_format="none")."""
  if opts.response_format == "json_schema":
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}}
  if opts.response_format == "json_object":
    return {"response_format": {"type": "json_object"}}
  return {}


# -- validators: text -> value, or ValueError (the client re-asks) ---------------------------

def parse_json(text: str) -> dict:
  m = re.search(r"\{.*\}", text, re.S)              # tolerate ```json fences and a preamble
  if not m:
    raise ValueError("no JSON object in the answer")
  try:
    value = json.loads(m.group(0))
  except json.JSONDecodeError as e:
    raise ValueError(f"not JSON ({e})") from None
  if not isinstance(value, dict):
    raise ValueError("not a JSON object")
  return value


def text_field(value: Any, name: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{name}: expected a non-empty string, got {value!r:.60}")
  return value.strip()


def parse_caption(text: str) -> dict[str, str]:
  d = parse_json(text)
  return {k: text_field(d.get(k), k) for k in PERSPECTIVES}


def parse_summary(text: str) -> str:
  return text_field(parse_json(text).get("summary"), "summary")


def parse_events(text: str, duration: float, tolerance: float = 1.0) -> list[dict]:
  events = parse_json(text).get("events")
  if not isinstance(events, list) or not events:
    raise ValueError("events: expected a non-empty list")
  out, last = [], 0.0
  for i, e in enumerate(events):
    if not isinstance(e, dict):
      raise ValueError(f"events[{i}]: expected an object")
    start, end = e.get("start"), e.get("end")
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, end)):
      raise ValueError(f"events[{i}]: start and end must be numbers of seconds")
    if not (0 <= start < end <= duration + tolerance) or start < last - tolerance:
      raise ValueError(f"events[{i}]: [{start}, {end}] s outside the {duration:.0f} s video or "
                       "overlapping the previous event")
    out.append({"start": float(start), "end": float(min(end, duration)),
                "title": text_field(e.get("title"), f"events[{i}].title")})
    last = end
  return out


def parse_qa(text: str, topic: str) -> dict[str, list[dict]]:
  d = parse_json(text)
  tasks = set(TOPICS[topic]) - {SUMMARY_TASK}
  out: dict[str, list[dict]] = {"open_ended": [], "multiple_choice": []}
  for fmt in out:
    items = d.get(fmt)
    if not isinstance(items, list):
      raise ValueError(f"{fmt}: expected a list")
    for i, q in enumerate(items):
      if not isinstance(q, dict) or q.get("task") not in tasks:
        raise ValueError(f"{fmt}[{i}].task: expected one of {sorted(tasks)}")
      item = {"task": q["task"], "question": text_field(q.get("question"), f"{fmt}[{i}].question")}
      if fmt == "open_ended":
        item["answer"] = text_field(q.get("answer"), f"{fmt}[{i}].answer")
      else:
        options = q.get("options")
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
          raise ValueError(f"{fmt}[{i}].options: expected 2-{len(LETTERS)} options")
        item["options"] = [text_field(o, f"{fmt}[{i}].options") for o in options]
        answer = q.get("answer")
        if not isinstance(answer, str) or answer.strip().upper() not in LETTERS[:len(options)]:
          raise ValueError(f"{fmt}[{i}].answer={answer!r}: not a letter among the "
                           f"{len(options)} options")
        item["answer"] = answer.strip().upper()
      out[fmt].append(item)
  if not out["open_ended"] and not out["multiple_choice"]:
    raise ValueError("no QA pairs")
  return out


# -- stages -----------------------------------------------------------------------------------

def data_url(frame: np.ndarray) -> str:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="JPEG", quality=90)
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(client, prompt: str, parse, opts: Options, schema: tuple[str, dict], images: Sequence[str] = ()):
  content: Any = prompt if not images else (
      [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": prompt}])
  messages = [{"role": "system", "content": prompts.SYSTEM}, {"role": "user", "content": content}]
  reply = client.complete(messages, validate=parse, attempts=opts.attempts, temperature=0,
                          **response_format(*schema, opts))
  return parse(reply)


def clips_of(path: str, opts: Options) -> tuple[list[dict], float]:
  """The video cut into clips of `clip_seconds` (the last one shorter), each with its frames
  ([frames_per_clip, size, size, 3] uint8, evenly spaced inside the clip)."""
  info = video_lib.probe(path)
  n = max(1, int(np.ceil(info.duration / opts.clip_seconds)))
  clips = []
  for i in range(n):
    start, end = i * opts.clip_seconds, min(info.duration, (i + 1) * opts.clip_seconds)
    times = start + (np.arange(opts.frames_per_clip) + 0.5) * (end - start) / opts.frames_per_clip
    idx = np.unique(np.clip((times * info.fps).astype(int), 0, info.frames - 1))
    clips.append({"start": start, "end": end, "frames": video_lib.decode_frames(path, idx, opts.frame_size)})
  return clips, info.duration


def caption_clips(clips: list[dict], captioner, opts: Options) -> list[dict]:
  for c in clips:
    c["caption"] = ask(captioner, prompts.clip_caption(c["start"], c["end"]), parse_caption, opts,
                        ("clip_caption", caption_schema(opts)), [data_url(f) for f in c["frames"]])
  return clips


def events_of(clips: list[dict], duration: float, llm, opts: Options) -> list[dict]:
  events = ask(llm, prompts.event_split(clips, duration), lambda t: parse_events(t, duration), opts,
                ("events", events_schema(duration, opts)))
  for i, e in enumerate(events):
    inside = [c for c in clips if c["end"] > e["start"] and c["start"] < e["end"]] or clips[:1]
    before = events[i - 1]["title"] if i else None
    after = events[i + 1]["title"] if i + 1 < len(events) else None
    e["summary"] = ask(llm, prompts.event_summary(e, inside, before, after), parse_summary, opts,
                        ("event_summary", summary_schema(opts)))
  return events


def _mc_question(q: dict) -> str:
  options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(q["options"]))
  return f"{q['question']}\n{options}\n{MC_SUFFIX}"


def records_of(video: str, duration: float, qas: Sequence[dict], opts: Options) -> list[dict]:
  """One LLaVA-style record per QA pair (`group_qa` in the training source, or
  `data.sources.group_qa`, merges up to 5 per sample as VideoMarathon's release does)."""
  stem = os.path.splitext(video)[0].replace("/", "_")
  out = []
  for i, q in enumerate(qas):
    mc = "options" in q
    human = _mc_question(q) if mc else q["question"]
    out.append({"id": f"{stem}_{i}", "video": video, "data_source": opts.data_source,
                "duration": round(duration, 3), "task": q["task"], "topic": q["topic"],
                "question_type": "multiple-choice" if mc else "open-ended",
                "conversations": [{"from": "human", "value": f"<image>\n{human}"},
                                  {"from": "gpt", "value": q["answer"]}]})
  return out


def annotate_video(path: str, captioner, llm, opts: Options, root: str = "") -> tuple[list[dict], collections.Counter]:
  """(records, counts) for one video; a stage that yields no valid answer drops what depends
  on it and is counted, never written."""
  stats: collections.Counter = collections.Counter()
  video = os.path.relpath(path, root) if root else os.path.basename(path)
  try:
    clips, duration = clips_of(path, opts)
    caption_clips(clips, captioner, opts)
    events = events_of(clips, duration, llm, opts)
  except video_lib.VideoError:
    stats["videos_unreadable"] += 1
    return [], stats
  except EndpointError:
    stats["videos_dropped_invalid_answers"] += 1
    return [], stats
  if len(events) < opts.min_events:
    stats["videos_too_few_events"] += 1
    return [], stats
  try:
    caption = ask(llm, prompts.global_summary(events, duration), parse_summary, opts,
                   ("global_summary", summary_schema(opts)))
  except EndpointError:
    stats["videos_dropped_invalid_answers"] += 1
    return [], stats
  qas = [{"task": SUMMARY_TASK, "topic": "event", "question": "Summarize the whole video.",
          "answer": caption}]                        # answered by the global caption (paper §3)
  for topic in opts.topics:
    try:
      got = ask(llm, prompts.qa(topic, clips, caption, opts.qa_per_format),
                 lambda t, topic=topic: parse_qa(t, topic), opts, ("qa", qa_schema(topic, opts)))
    except EndpointError:
      stats["qa_topics_dropped"] += 1
      continue
    qas += [{**q, "topic": topic} for fmt in ("open_ended", "multiple_choice") for q in got[fmt]]
  stats["videos"] += 1
  stats["qa"] += len(qas)
  return records_of(video, duration, qas, opts), stats


def annotate_videos(paths: Sequence[str], captioner, llm, opts: Options = Options(),
                    root: str = "", progress: bool = True) -> tuple[list[dict], collections.Counter]:
  """All videos, `opts.concurrency` at a time; records in the order of `paths`."""
  return run_videos(paths, lambda p: annotate_video(p, captioner, llm, opts, root), opts.concurrency, progress)


def run_videos(paths: Sequence[str], annotate, concurrency: int,
               progress: bool = True) -> tuple[list[dict], collections.Counter]:
  """`annotate(path) -> (records, counts)` over every video, `concurrency` at a time, with a
  progress bar; the records in the order of `paths`, the counts summed."""
  from tqdm import tqdm
  stats: collections.Counter = collections.Counter()
  results: dict[int, list[dict]] = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
    futures = {pool.submit(annotate, p): i for i, p in enumerate(paths)}
    for f in tqdm(concurrent.futures.as_completed(futures), total=len(futures), disable=not progress,
                  desc="videos"):
      records, counts = f.result()
      results[futures[f]] = records
      stats.update(counts)
  return [r for i in sorted(results) for r in results[i]], stats
