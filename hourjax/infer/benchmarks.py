"""Multiple-choice long-video benchmarks: readers for each benchmark's published annotation format,
lmms-eval's prompts and answer extraction (spec §6), and accuracy per group.

Every reader returns `Item`s: the video file, the question, lettered options, the answer letter,
the groups the benchmark reports (duration / category / task) and, for Video-MME with
subtitles, the subtitle file.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import re
from typing import Callable, Sequence

LETTERS = "ABCDEFGH"


@dataclasses.dataclass(frozen=True)
class Item:
  id: str
  video: str
  question: str
  options: tuple[str, ...]          # option texts without their letters
  answer: str                       # "A", "B", ...
  groups: tuple[tuple[str, str], ...] = ()      # (("duration", "long"), ("task", "counting"))
  subtitles: str = ""               # .srt path (Video-MME with subtitles)


def _letter(i: int) -> str:
  return LETTERS[i]


def _strip_letter(option: str) -> str:
  """"A. text" / "(A) text" -> "text"."""
  return re.sub(r"^\(?[A-H][.)]\s*", "", option.strip())


def _read_json_or_jsonl(path: str) -> list:
  with open(path) as f:
    if path.endswith(".jsonl"):
      return [json.loads(line) for line in f if line.strip()]
    return json.load(f)


# -- readers ------------------------------------------------------------------------------------

def read_videomme(root: str, subtitles: bool = False) -> list[Item]:
  """`{root}/videomme/test-*.parquet` (or .json/.jsonl with the same columns: video_id, videoID,
  duration, domain, sub_category, task_type, question_id, question, options ["A. ...", ...],
  answer); videos at `{root}/data/{videoID}.mp4`, subtitles at `{root}/subtitle/{videoID}.srt`."""
  rows = []
  for path in sorted(glob.glob(os.path.join(root, "videomme", "*"))):
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq
      rows += pq.read_table(path).to_pylist()
    elif path.endswith((".json", ".jsonl")):
      rows += _read_json_or_jsonl(path)
  if not rows:
    raise FileNotFoundError(f"no Video-MME annotations under {root}/videomme")
  return [Item(str(r["question_id"]), os.path.join(root, "data", f"{r['videoID']}.mp4"), r["question"],
               tuple(_strip_letter(o) for o in r["options"]), r["answer"].strip(),
               (("duration", r["duration"]), ("domain", r["domain"]), ("task", r["task_type"])),
               os.path.join(root, "subtitle", f"{r['videoID']}.srt") if subtitles else "")
          for r in rows]


def read_longvideobench(root: str) -> list[Item]:
  """`{root}/lvb_val.json`: id, video_path, question, candidates, correct_choice (index),
  duration_group, question_category; videos under `{root}/videos/`."""
  rows = _read_json_or_jsonl(os.path.join(root, "lvb_val.json"))
  return [Item(str(r["id"]), os.path.join(root, "videos", r["video_path"]), r["question"],
               tuple(c for c in r["candidates"] if c != "N/A"), _letter(int(r["correct_choice"])),
               (("duration", str(r["duration_group"])), ("category", r["question_category"])))
          for r in rows]


def read_lvbench(root: str) -> list[Item]:
  """`{root}/video_info.meta.jsonl`: per video `key` and `qa` [{uid, question (options inside as
  "(A) ..." lines), answer, question_type [...]}]; videos at `{root}/videos/{key}.mp4`."""
  items = []
  for video in _read_json_or_jsonl(os.path.join(root, "video_info.meta.jsonl")):
    for qa in video["qa"]:
      lines = qa["question"].split("\n")
      options = tuple(_strip_letter(line) for line in lines[1:] if re.match(r"^\(?[A-H][.)]", line.strip()))
      groups = tuple(("task", t) for t in qa.get("question_type", []))
      items.append(Item(str(qa["uid"]), os.path.join(root, "videos", f"{video['key']}.mp4"), lines[0],
                        options, qa["answer"].strip(), groups))
  return items


def read_tempcompass(root: str) -> list[Item]:
  """`{root}/multi-choice.json`: {video_id: {dimension: [{question (options inside as "A. ..."
  lines), answer ("A. ...")}]}}; videos at `{root}/videos/{video_id}.mp4`."""
  items = []
  for video_id, dims in _read_json_or_jsonl(os.path.join(root, "multi-choice.json")).items():
    for dim, qas in dims.items():
      for i, qa in enumerate(qas):
        lines = qa["question"].split("\n")
        options = tuple(_strip_letter(line) for line in lines[1:] if re.match(r"^[A-H][.)]", line.strip()))
        items.append(Item(f"{video_id}/{dim}/{i}", os.path.join(root, "videos", f"{video_id}.mp4"), lines[0],
                          options, qa["answer"].strip()[0], (("dimension", dim),)))
  return items


def read_mlvu(root: str) -> list[Item]:
  """MLVU multiple-choice dev: `{root}/json/*.json` with video, duration, question, candidates,
  answer (text), question_type; videos at `{root}/video/{question_type}/{video}` (M-Avg)."""
  items = []
  for path in sorted(glob.glob(os.path.join(root, "json", "*.json"))):
    for i, r in enumerate(_read_json_or_jsonl(path)):
      task = r["question_type"]
      items.append(Item(f"{task}/{i}", os.path.join(root, "video", task, r["video"]), r["question"],
                        tuple(r["candidates"]), _letter(r["candidates"].index(r["answer"])), (("task", task),)))
  return items


READERS: dict[str, Callable[[str], list[Item]]] = {
    "videomme": read_videomme,
    "videomme_sub": lambda root: read_videomme(root, subtitles=True),
    "longvideobench": read_longvideobench,
    "lvbench": read_lvbench,
    "tempcompass": read_tempcompass,
    "mlvu": read_mlvu,
}


# -- prompts (lmms-eval) -------------------------------------------------------------------------

VIDEOMME_PRE = ("Select the best answer to the following multiple-choice question based on the video and the "
                "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
POST = "Answer with the option's letter from the given choices directly."


def subtitle_text(path: str, times: Sequence[float]) -> str:
  """The .srt lines shown at any of `times` (seconds), in order: lmms-eval's frame subtitles."""
  if not path or not os.path.exists(path):
    return ""
  out = []
  for block in open(path, encoding="utf-8", errors="replace").read().strip().split("\n\n"):
    lines = block.strip().split("\n")
    m = re.match(r"(\d+):(\d+):(\d+)[,.](\d+) --> (\d+):(\d+):(\d+)[,.](\d+)", lines[1] if len(lines) > 1 else "")
    if not m:
      continue
    h1, m1, s1, f1, h2, m2, s2, f2 = map(int, m.groups())
    start, end = h1 * 3600 + m1 * 60 + s1 + f1 / 1000, h2 * 3600 + m2 * 60 + s2 + f2 / 1000
    if any(start <= t <= end for t in times):
      out.append(re.sub(r"<[^>]+>", "", " ".join(lines[2:])))
  return "\n".join(out)


def prompt(benchmark: str, item: Item, subtitles: str = "") -> str:
  options = "\n".join(f"{_letter(i)}. {o}" for i, o in enumerate(item.options))
  if benchmark.startswith("videomme"):
    pre = (f"This video's subtitles are listed below:\n{subtitles}\n" if subtitles else "") + VIDEOMME_PRE
    return f"{pre}\n{item.question}\n{options}\nThe best answer is:"
  return f"{item.question}\n{options}\n{POST}\n"


def extract_letter(response: str, num_options: int, rng: random.Random | None = None) -> str:
  """lmms-eval's parsing: drop answer phrases, "" if a long reply names no option, else the
  first option letter; with `rng` (LongVideoBench), a random option when nothing parses."""
  letters = LETTERS[:num_options]
  s = response.strip()
  for phrase in ("The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:"):
    s = s.replace(phrase, "")
  found = re.search(f"[{letters}]", s)
  if (len(s.split()) > 10 and not found) or not found:
    return rng.choice(letters) if rng is not None else ""
  return found.group(0)


def score(results: Sequence[dict]) -> dict:
  """results: {"id", "correct", "groups": [[name, value], ...]} -> overall and per-group accuracy."""
  out: dict = {"overall": {"accuracy": 0.0, "n": len(results)}}
  if results:
    out["overall"]["accuracy"] = sum(r["correct"] for r in results) / len(results)
  per: dict[tuple[str, str], list[bool]] = {}
  for r in results:
    for name, value in r["groups"]:
      per.setdefault((name, value), []).append(r["correct"])
  for (name, value), hits in sorted(per.items()):
    out.setdefault(name, {})[value] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
  if any(name == "task" for name, _ in per):     # MLVU's M-Avg: the mean over tasks
    tasks = out["task"]
    out["overall"]["task_mean"] = sum(v["accuracy"] for v in tasks.values()) / len(tasks)
  return out
