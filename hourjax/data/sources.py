"""Annotation sources and the mixture that combines them (spec §4.3-4.4).

A source is one LLaVA-style JSON or JSONL file: records with `id`, `video` (relative to
`{media}/{data_source}/`) or `image` (relative to `{media}/`), and `conversations`. A mixture is a
list of sources, each with the official sampling strategy (`all`, `first:N%`, `end:N%`,
`random:N%`, or an absolute count `first:N`) and a weight (how many times per epoch each selected
record is seen: 2 = twice, 0.5 = a seeded random half).

Records split into streams by what the model needs to read them: `video` (decoded pixels),
`features` (a source with cached SigLIP features), `image` and `text`. Every batch comes from one
stream, as the official `per_stream` batching keeps long and short videos apart.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np

STREAMS = ("video", "features", "image", "text")


@dataclasses.dataclass(frozen=True)
class Source:
  annotations: str            # .json or .jsonl, relative to the data root unless absolute
  media: str = ""             # folder the `video` / `image` paths are relative to
  features: str = ""          # cached features (launch/cache_features.py): the features stream
  strategy: str = "all"
  weight: float = 1.0
  group_qa: int = 0           # >0: merge single-QA records of one video into up to N turns
  min_seconds: float = 0.0    # keep videos whose `duration` lies in [min_seconds, max_seconds)
  max_seconds: float = 0.0    # 0: no upper limit (ProLongVid's stages: < 2, 2-5, 5-20 minutes)

  def __post_init__(self):
    parse_strategy(self.strategy)
    if not self.weight > 0:
      raise ValueError(f"source {self.annotations}: weight={self.weight} must be positive")


def parse_strategy(strategy: str) -> tuple[str, float | None, bool]:
  """'first:10%' -> ('first', 0.1, True); 'first:1000' -> ('first', 1000, False); 'all'."""
  if strategy == "all":
    return "all", None, False
  m = re.fullmatch(r"(first|end|random):(\d+(?:\.\d+)?)(%?)", strategy)
  if not m:
    raise ValueError(f"sampling strategy {strategy!r}: expected all, first:N%, end:N%, random:N% "
                     "or first:N / end:N / random:N")
  amount = float(m.group(2))
  return m.group(1), amount / 100 if m.group(3) else amount, bool(m.group(3))


def read_annotations(path: str) -> list[dict]:
  """A JSON list or JSONL file of records; a bad line names the file and line."""
  with open(path) as f:
    if path.endswith(".jsonl"):
      out = []
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            out.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
      return out
    records = json.load(f)
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a JSON list of records")
  return records


def select(records: Sequence[dict], strategy: str, seed: int) -> list[dict]:
  """The official per-file selection."""
  how, amount, percent = parse_strategy(strategy)
  if how == "all":
    return list(records)
  n = min(len(records), int(len(records) * amount) if percent else int(amount))
  if how == "first":
    return list(records[:n])
  if how == "end":
    return list(records[len(records) - n:])
  order = np.random.default_rng(seed).permutation(len(records))[:n]
  return [records[i] for i in sorted(order)]


def group_qa(records: Sequence[dict], max_pairs: int) -> list[dict]:
  """Single-QA records of the same video -> multi-turn records of up to `max_pairs` QA pairs
  (the README's VideoMarathon grouping); only the first human turn keeps `<image>`."""
  groups: dict[Any, list[dict]] = {}
  for r in records:
    groups.setdefault((r.get("data_source"), r.get("video")), []).append(r)
  out = []
  for (_, video), rs in groups.items():
    if video is None:
      out.extend(rs)
      continue
    for i in range(0, len(rs), max_pairs):
      chunk = rs[i:i + max_pairs]
      turns = [dict(t) for r in chunk for t in r["conversations"]]
      seen = False
      for t in turns:
        if t["from"] == "human":
          if seen:
            t["value"] = t["value"].replace("<image>", "").strip()
          seen = True
      out.append({**chunk[0], "id": "+".join(str(r.get("id")) for r in chunk), "conversations": turns})
  return out


def locate(record: dict, source: Source, root: str) -> tuple[str, dict]:
  """(stream, the record with absolute `_path` (video or image) and `_features` paths)."""
  media = resolve(root, source.media)
  if "video" in record:
    rel = os.path.join(record.get("data_source", ""), record["video"])
    if source.features:
      features = os.path.join(resolve(root, source.features), os.path.splitext(rel)[0] + ".safetensors")
      return "features", {**record, "_path": os.path.join(media, rel), "_features": features}
    return "video", {**record, "_path": os.path.join(media, rel)}
  if "image" in record:
    image = record["image"]
    paths = [os.path.join(media, i) for i in ([image] if isinstance(image, str) else image)]
    return "image", {**record, "_path": paths[0] if isinstance(image, str) else paths}
  return "text", dict(record)


def by_duration(records: Sequence[dict], source: Source) -> list[dict]:
  missing = [r.get("id") for r in records if "video" in r and "duration" not in r]
  if missing:
    raise ValueError(f"source {source.annotations}: a duration filter needs a `duration` field; "
                     f"{len(missing)} video records lack it (first: {missing[0]})")
  upper = source.max_seconds or float("inf")
  return [r for r in records if "video" not in r or source.min_seconds <= r["duration"] < upper]


def resolve(root: str, path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(root, path)


def epoch_records(sources: Sequence[Source], root: str, seed: int) -> dict[str, list[dict]]:
  """Every stream's records for one epoch, with absolute media paths (`sources.locate`).

  A missing annotation file or media folder is an error here, at start-up; a missing single
  file is found (and skipped) when the sample is read.
  """
  if not sources:
    raise ValueError("the data mixture has no sources")
  streams: dict[str, list[dict]] = {}
  for i, src in enumerate(sources):
    for what, path in (("annotations", src.annotations), ("media", src.media), ("features", src.features)):
      if path and not os.path.exists(resolve(root, path)):
        raise FileNotFoundError(f"data source {i} ({src.annotations}): {what} {resolve(root, path)} "
                                "does not exist")
    records = select(read_annotations(resolve(root, src.annotations)), src.strategy, seed + i)
    if src.min_seconds or src.max_seconds:
      records = by_duration(records, src)
    if src.group_qa:
      records = group_qa(records, src.group_qa)
    whole, part = divmod(src.weight, 1.0)
    rng = np.random.default_rng((seed, i))
    chosen = list(range(len(records))) * int(whole)
    chosen += sorted(rng.permutation(len(records))[:round(part * len(records))].tolist())
    for j in chosen:
      stream, record = locate(records[j], src, root)
      streams.setdefault(stream, []).append(record)
  return streams
