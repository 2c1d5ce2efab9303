"""The long-video benchmarks as their official releases lay them out, read into the documents
lmms-eval's tasks read (the fields of its Hugging Face dataset rows), so that prompts and scores
are computed from the same fields lmms-eval uses.

Release layouts under `root`, and the lmms-eval tasks they feed:
- Video-MME: `videomme/test-*.parquet` (or .json / .jsonl, same columns), `data/<videoID>.mp4`
  (.MP4, .mkv), `subtitle/<videoID>.srt` -> videomme, videomme_w_subtitle.
- LongVideoBench: `lvb_val.json` (`candidates`), or `validation-*.parquet` (`option0..4`);
  `videos/<video_path>` -> longvideobench_val_v.
- LVBench: `video_info.meta.jsonl` (per video `key`, `qa` [{uid, question with "(A) ..." lines,
  answer, question_type}]); `videos/<key>.mp4` -> lvbench.
- TempCompass: `questions/{multi-choice,yes_no,caption_matching,captioning}.json` ({video_id:
  {dim: [{question, answer}]}}); `videos/<video_id>.mp4` -> tempcompass_multi_choice, _yes_no,
  _caption_matching, _captioning.
- MLVU (dev): `json/1_plotQA.json` ... `7_topic_reasoning.json` (multiple choice: video, duration,
  question, candidates, answer text), `8_sub_scene.json`, `9_summary.json` (open-ended);
  `video/<json stem>/<video>` -> mlvu_dev.

A malformed file or record is an error naming the file and the record; a missing video is not
an error here (the evaluation records it as skipped). Open-ended tasks that lmms-eval 0.7.3 has
no task for (MLVU's sub-scene captioning and summary) are returned as `skipped`, with a reason.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any, Callable, Sequence


class BenchmarkFormatError(ValueError):
  """An annotation file that does not hold the benchmark's published layout."""


@dataclasses.dataclass(frozen=True)
class Doc:
  task: str                 # lmms-eval's task name
  id: str
  video: str                # the video file
  fields: dict              # the document as lmms-eval's dataset row holds it
  subtitles: str = ""       # Video-MME's .srt (with-subtitle task)


@dataclasses.dataclass(frozen=True)
class Release:
  docs: list[Doc]
  skipped: dict[str, str]   # task or file -> why it is not evaluated


def _load(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      if path.endswith(".jsonl"):
        return [json.loads(line) for line in f if line.strip()]
      return json.load(f)
  except json.JSONDecodeError as e:
    raise BenchmarkFormatError(f"{path}: not JSON ({e})") from None


def _parquet(path: str) -> list[dict]:
  import pyarrow.parquet as pq
  try:
    return pq.read_table(path).to_pylist()
  except Exception as e:      # pyarrow raises its own error types
    raise BenchmarkFormatError(f"{path}: not a readable parquet file ({e})") from None


def _need(path: str, i: int, record: Any, fields: dict[str, type | tuple]) -> None:
  """Every field present with its type, or an error naming the file, the record and the field."""
  if not isinstance(record, dict):
    raise BenchmarkFormatError(f"{path}: record {i} is a {type(record).__name__}, not an object")
  for name, kind in fields.items():
    if name not in record:
      raise BenchmarkFormatError(f"{path}: record {i} has no {name!r} field")
    if not isinstance(record[name], kind):
      raise BenchmarkFormatError(f"{path}: record {i}: {name!r} is a {type(record[name]).__name__}, "
                                 f"expected {getattr(kind, '__name__', kind)}")


def _records(root: str, patterns: Sequence[str], what: str) -> list[tuple[str, list]]:
  paths = sorted(p for pattern in patterns for p in glob.glob(os.path.join(root, pattern)))
  if not paths:
    raise FileNotFoundError(f"no {what} under {root} ({', '.join(patterns)})")
  out = []
  for path in paths:
    rows = _parquet(path) if path.endswith(".parquet") else _load(path)
    if not isinstance(rows, list):
      raise BenchmarkFormatError(f"{path}: expected a list of records")
    out.append((path, rows))
  return out


# -- Video-MME ----------------------------------------------------------------------------------

VIDEOMME = dict(video_id=str, duration=str, domain=str, sub_category=str, videoID=str, question_id=str,
                task_type=str, question=str, options=(list, tuple), answer=str)


def _videomme_video(root: str, video_id: str) -> str:
  """lmms-eval's lookup: data/<id>.mp4, else .MP4, else .mkv."""
  path = os.path.join(root, "data", f"{video_id}.mp4")
  for alt in (path, path.replace("mp4", "MP4"), path.replace("mp4", "mkv")):
    if os.path.exists(alt):
      return alt
  return path


def read_videomme(root: str) -> Release:
  docs = []
  for path, rows in _records(root, ("videomme/*.parquet", "videomme/*.json", "videomme/*.jsonl"),
                             "Video-MME annotations"):
    for i, r in enumerate(rows):
      _need(path, i, r, VIDEOMME)
      fields = {**r, "options": list(r["options"])}
      video = _videomme_video(root, r["videoID"])
      srt = os.path.join(root, "subtitle", f"{r['videoID']}.srt")
      docs += [Doc("videomme", r["question_id"], video, fields),
               Doc("videomme_w_subtitle", r["question_id"], video, fields, srt)]
  return Release(docs, {})


# -- LongVideoBench -----------------------------------------------------------------------------

LVB = dict(id=str, question=str, correct_choice=int, duration_group=(int, float, str), question_category=str,
           video_path=str)


def read_longvideobench(root: str) -> Release:
  if os.path.exists(os.path.join(root, "lvb_val.json")):
    files = [(os.path.join(root, "lvb_val.json"), _load(os.path.join(root, "lvb_val.json")))]
  else:
    files = _records(root, ("validation-*.parquet",), "LongVideoBench annotations (lvb_val.json)")
  docs = []
  for path, rows in files:
    for i, r in enumerate(rows):
      _need(path, i, r, LVB)
      fields = dict(r)
      if "candidates" in r:           # the release's lvb_val.json: lmms-eval's rows hold option0..4
        if not isinstance(r["candidates"], list) or not 1 <= len(r["candidates"]) <= 5:
          raise BenchmarkFormatError(f"{path}: record {i}: 'candidates' must be a list of 1-5 options")
        cands = list(r["candidates"]) + ["N/A"] * (5 - len(r["candidates"]))
        fields.update({f"option{j}": c for j, c in enumerate(cands)})
        del fields["candidates"]
      elif "option0" not in r:
        raise BenchmarkFormatError(f"{path}: record {i} has neither 'candidates' nor 'option0'")
      docs.append(Doc("longvideobench_val_v", r["id"], os.path.join(root, "videos", r["video_path"]), fields))
  return Release(docs, {})


# -- LVBench ------------------------------------------------------------------------------------

def read_lvbench(root: str) -> Release:
  path = os.path.join(root, "video_info.meta.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no LVBench annotations at {path}")
  docs = []
  for i, video in enumerate(_load(path)):
    _need(path, i, video, dict(key=str, qa=list))
    for j, qa in enumerate(video["qa"]):
      _need(path, i, qa, dict(uid=(int, str), question=str, answer=str))
      fields = {**qa, "video_path": f"{video['key']}.mp4", "key": video["key"]}
      docs.append(Doc("lvbench", str(qa["uid"]), os.path.join(root, "videos", f"{video['key']}.mp4"), fields))
  return Release(docs, {})


# -- TempCompass --------------------------------------------------------------------------------

TEMPCOMPASS = {"multi-choice": "tempcompass_multi_choice", "yes_no": "tempcompass_yes_no",
               "caption_matching": "tempcompass_caption_matching", "captioning": "tempcompass_captioning"}


def _tempcompass_file(root: str, fmt: str) -> str | None:
  for path in (os.path.join(root, "questions", f"{fmt}.json"), os.path.join(root, f"{fmt}.json")):
    if os.path.exists(path):
      return path
  return None


def read_tempcompass(root: str) -> Release:
  docs, skipped = [], {}
  loaded = {}
  for fmt in TEMPCOMPASS:
    path = _tempcompass_file(root, fmt)
    if path is None:
      skipped[TEMPCOMPASS[fmt]] = f"no questions/{fmt}.json under {root}"
      continue
    data = _load(path)
    if not isinstance(data, dict):
      raise BenchmarkFormatError(f"{path}: expected {{video_id: {{dimension: [questions]}}}}")
    loaded[fmt] = (path, data)
  if not loaded:
    raise FileNotFoundError(f"no TempCompass questions under {root} (questions/<format>.json)")
  for fmt, (path, data) in loaded.items():
    n = 0
    for video_id, dims in data.items():
      if not isinstance(dims, dict):
        raise BenchmarkFormatError(f"{path}: video {video_id}: expected {{dimension: [questions]}}")
      for dim, qas in dims.items():
        for k, qa in enumerate(qas if isinstance(qas, list) else [qas]):
          _need(path, n, qa, dict(question=str, answer=str))
          fields = {"video_id": video_id, "question": qa["question"], "answer": qa["answer"], "dim": dim}
          if fmt == "captioning":     # judged against the video's multi-choice question of the dimension
            mc = loaded.get("multi-choice", (None, {}))[1].get(video_id, {}).get(dim)
            if not mc:
              raise BenchmarkFormatError(f"{path}: record {n} (video {video_id}, {dim}): captioning needs the "
                                         "matching multi-choice question (questions/multi-choice.json)")
            fields.update(mc_question=mc[0]["question"], mc_answer=mc[0]["answer"])
          docs.append(Doc(TEMPCOMPASS[fmt], f"{video_id}/{dim}/{k}", os.path.join(root, "videos", f"{video_id}.mp4"),
                          fields))
          n += 1
  return Release(docs, skipped)


# -- MLVU ---------------------------------------------------------------------------------------

MLVU_DEV = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")
MLVU_OPEN = ("sub_scene", "summary")


def mlvu_question(question: str, candidates: Sequence[str]) -> str:
  """The multiple-choice text of lmms-eval's MLVU rows, as MLVU's own evaluation formats it
  (`qa_template`): the question, then "Options:" and "(A) ..." lines."""
  lines = [f"Question: {question}", "Options:"] + [f"({chr(65 + i)}) {c}" for i, c in enumerate(candidates)]
  return "\n".join(lines)


def read_mlvu(root: str) -> Release:
  docs, skipped = [], {}
  files = {re.sub(r"^\d+_", "", os.path.basename(p)[:-5]): p
           for p in sorted(glob.glob(os.path.join(root, "json", "*.json")))}
  if not files:
    raise FileNotFoundError(f"no MLVU annotations under {root}/json")
  for task, path in files.items():
    if task in MLVU_OPEN:
      skipped[task] = (f"{os.path.basename(path)} is open-ended (generation); lmms-eval 0.7.3 has no task for it "
                       "and its scoring needs a GPT judge: not evaluated")
      continue
    if task not in MLVU_DEV:
      skipped[task] = f"{os.path.basename(path)}: not an MLVU dev multiple-choice task"
      continue
    stem = os.path.basename(path)[:-5]
    for i, r in enumerate(_load(path)):
      _need(path, i, r, dict(video=str, question=str, candidates=list, answer=str))
      if r["answer"] not in r["candidates"]:
        raise BenchmarkFormatError(f"{path}: record {i}: the answer is not one of the candidates")
      fields = {"video_name": f"{stem}/{r['video']}", "duration": r.get("duration"),
                "question": mlvu_question(r["question"], r["candidates"]), "candidates": list(r["candidates"]),
                "answer": chr(65 + r["candidates"].index(r["answer"])), "task_type": task,
                "question_id": f"{task}/{i}"}
      docs.append(Doc("mlvu_dev", f"{task}/{i}", os.path.join(root, "video", stem, r["video"]), fields))
  return Release(docs, skipped)


READERS: dict[str, Callable[[str], Release]] = {
    "videomme": read_videomme, "longvideobench": read_longvideobench, "lvbench": read_lvbench,
    "tempcompass": read_tempcompass, "mlvu": read_mlvu,
}
