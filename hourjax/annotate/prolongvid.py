"""ProLongVid's data construction (paper §3.2-3.4) against OpenAI-compatible endpoints.

  frames at 1 FPS -> a caption per frame (captioner) -> semantic segments (`segments`: image and
  caption features, agglomerative clustering) -> a detailed caption per segment (captioner, the
  segment's frames) -> the video's dense caption from the timed segment captions (LLM) -> QA of
  the four task types by the three input strategies (LLM) -> LLaVA-style training records

    records, stats = prolongvid.annotate_videos(paths, captioner, llm, features, Options())

`features(frames uint8 [N, S, S, 3], captions) -> (image [N, D], text [N, D])` gives the
segmentation its features; `launch.annotate --pipeline prolongvid` builds it from a SigLIP
checkpoint's two towers (the paper uses Florence). Videos under `min_seconds` (a minute) are
not segmented: the captioner describes the whole video in one pass and QA comes from that
description alone. For longer videos the strategies are the paper's: the global description
for summarisation, general QA and creative writing; several segments' descriptions with their
times for temporal understanding; one random segment (seeded per video) with the global
description as background for its details. Every answer is validated as in `videomarathon`
(re-asked, then counted and dropped).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import random
from typing import Any, Callable, Sequence

import numpy as np

from hourjax.annotate import prompts, segments as seg
from hourjax.annotate.videomarathon import (ask, check_response_format, data_url, object_schema, parse_json,
                                            run_videos, string_schema, text_field)
from hourjax.data import video as video_lib
from hourjax.endpoint import EndpointError

TASKS = tuple(prompts.PROLONGVID_TASKS)
# input strategy -> the task types it generates (paper §3.4); short videos: "global", all four
STRATEGIES = {"global": TASKS[:3], "segments": TASKS[3:], "segment": ("General Video QA",)}

Features = Callable[[np.ndarray, Sequence[str]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Options:
  threshold: float = 0.7          # the clustering's distance threshold δ
  min_seconds: float = 60.0       # shorter videos are not segmented
  frame_size: int = 384           # frames for captions and features (SigLIP's input)
  frames_per_segment: int = 8     # frames the captioner sees per segment (evenly spaced)
  qa_per_strategy: int = 3
  attempts: int = 3
  concurrency: int = 4            # videos in flight
  seed: int = 0                   # which segment the "segment" strategy describes
  data_source: str = "custom"
  response_format: str = "json_schema"   # as videomarathon.Options
  max_text_chars: int = 0

  def __post_init__(self):
    check_response_format(self.response_format)


def parse_caption(text: str) -> str:
  return text_field(parse_json(text).get("caption"), "caption")


def parse_qa(text: str, tasks: Sequence[str]) -> list[dict]:
  items = parse_json(text).get("qa")
  if not isinstance(items, list) or not items:
    raise ValueError("qa: expected a non-empty list")
  out = []
  for i, q in enumerate(items):
    if not isinstance(q, dict) or q.get("task") not in tasks:
      raise ValueError(f"qa[{i}].task: expected one of {list(tasks)}")
    out.append({"task": q["task"], "question": text_field(q.get("question"), f"qa[{i}].question"),
                "answer": text_field(q.get("answer"), f"qa[{i}].answer")})
  return out


def _caption_schema(opts: Options) -> tuple[str, dict]:
  return "caption", object_schema({"caption": string_schema(opts)})


def _qa_schema(tasks: Sequence[str], opts: Options) -> tuple[str, dict]:
  item = object_schema({"task": {"enum": list(tasks)}, "question": string_schema(opts),
                        "answer": string_schema(opts)})
  return "qa", object_schema({"qa": {"type": "array", "items": item, "minItems": 1,
                                     "maxItems": opts.qa_per_strategy}})


def frames_at_1fps(path: str, size: int) -> tuple[np.ndarray, np.ndarray, float]:
  """(uint8 frames [N, size, size, 3] at 1 FPS, their times in seconds, the duration)."""
  info = video_lib.probe(path)
  idx = video_lib.official_frame_indices(info.frames, info.fps, min_frames=0)
  return video_lib.decode_frames(path, idx, size), idx / info.fps, info.duration


def segment_video(frames: np.ndarray, times: np.ndarray, duration: float, captioner, features: Features,
                  opts: Options) -> list[tuple[float, float]]:
  """The video's segments: one under `min_seconds`, else the paper's semantic segmentation."""
  if duration < opts.min_seconds:
    return [(0.0, float(duration))]
  captions = [ask(captioner, prompts.frame_caption(), parse_caption, opts, _caption_schema(opts), [data_url(f)])
              for f in frames]
  image, text = features(frames, captions)
  return seg.segment(image, text, times, duration, opts.threshold, opts.min_seconds)


def caption_segments(frames: np.ndarray, times: np.ndarray, spans: Sequence[tuple[float, float]], captioner,
                     opts: Options) -> list[dict]:
  out = []
  for start, end in spans:
    inside = np.flatnonzero((times >= start) & (times < end))
    inside = inside if len(inside) else np.array([int(np.argmin(np.abs(times - start)))])
    pick = inside[np.linspace(0, len(inside) - 1, min(opts.frames_per_segment, len(inside))).round().astype(int)]
    caption = ask(captioner, prompts.segment_caption(start, end, whole=len(spans) == 1), parse_caption, opts,
                  _caption_schema(opts), [data_url(frames[i]) for i in pick])
    out.append({"start": start, "end": end, "caption": caption})
  return out


def generate_qa(described: list[dict], global_caption: str, llm, opts: Options, rng: random.Random,
                stats: collections.Counter) -> list[dict]:
  """QA pairs by strategy; a strategy whose answers stay invalid is counted and dropped."""
  plans = ([("global", TASKS, [])] if len(described) == 1 else
           [("global", STRATEGIES["global"], []), ("segments", STRATEGIES["segments"], described),
            ("segment", STRATEGIES["segment"], [rng.choice(described)])])
  qas = []
  for strategy, tasks, local in plans:
    try:
      got = ask(llm, prompts.prolongvid_qa(strategy, tasks, global_caption, local, opts.qa_per_strategy),
                lambda t, tasks=tasks: parse_qa(t, tasks), opts, _qa_schema(tasks, opts))
    except EndpointError:
      stats["qa_strategies_dropped"] += 1
      continue
    qas += [{**q, "strategy": strategy} for q in got]
  return qas


def annotate_video(path: str, captioner, llm, features: Features, opts: Options,
                   root: str = "") -> tuple[list[dict], collections.Counter]:
  """(records, counts) for one video."""
  stats: collections.Counter = collections.Counter()
  name = os.path.relpath(path, root) if root else os.path.basename(path)
  try:
    frames, times, duration = frames_at_1fps(path, opts.frame_size)
    spans = segment_video(frames, times, duration, captioner, features, opts)
    described = caption_segments(frames, times, spans, captioner, opts)
    global_caption = described[0]["caption"] if len(described) == 1 else ask(
        llm, prompts.video_caption(described, duration), parse_caption, opts, _caption_schema(opts))
  except video_lib.VideoError:
    stats["videos_unreadable"] += 1
    return [], stats
  except EndpointError:
    stats["videos_dropped_invalid_answers"] += 1
    return [], stats
  qas = generate_qa(described, global_caption, llm, opts, random.Random(f"{opts.seed}:{name}"), stats)
  stem = os.path.splitext(name)[0].replace("/", "_")
  records = [{"id": f"{stem}_{i}", "video": name, "data_source": opts.data_source, "duration": round(duration, 3),
              "task": q["task"], "strategy": q["strategy"],
              "segments": [[round(s["start"], 3), round(s["end"], 3)] for s in described],
              "conversations": [{"from": "human", "value": f"<image>\n{q['question']}"},
                                {"from": "gpt", "value": q["answer"]}]} for i, q in enumerate(qas)]
  stats["videos"] += 1
  stats["segments"] += len(described)
  stats["qa"] += len(records)
  return records, stats


def annotate_videos(paths: Sequence[str], captioner, llm, features: Features, opts: Options = Options(),
                    root: str = "", progress: bool = True) -> tuple[list[dict], collections.Counter]:
  """All videos, `opts.concurrency` at a time; records in the order of `paths`."""
  return run_videos(paths, lambda p: annotate_video(p, captioner, llm, features, opts, root), opts.concurrency,
                    progress)


def siglip_features(vision: Any, vision_params: Any, text: Any, text_params: Any,
                    tokenize: Callable[[Sequence[str]], np.ndarray], chunk: int = 64) -> Features:
  """`features` from SigLIP's two towers (hourjax modules and their params, passed in: this layer
  builds no model) and a tokenizer giving [N, max_positions] ids, as SigLIP's processor pads."""
  import jax
  encode_image = jax.jit(lambda p, x: vision.apply({"params": p}, x)["pooler_output"])
  encode_text = jax.jit(lambda p, ids: text.apply({"params": p}, ids)["pooler_output"])

  def features(frames: np.ndarray, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    image = np.concatenate([np.asarray(encode_image(vision_params, video_lib.to_siglip(frames[i:i + chunk])))
                            for i in range(0, len(frames), chunk)])
    return image, np.asarray(encode_text(text_params, tokenize(captions)))
  return features
