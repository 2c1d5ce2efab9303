"""Prompts, answer extraction and scores of the long-video benchmarks, in two protocols.

- `lmms-eval` (the default): identical to lmms-eval 0.7.3's tasks (videomme, videomme_w_subtitle,
  longvideobench_val_v, lvbench, tempcompass_*, mlvu_dev), tested against lmms-eval's own code.
  Its per-model prompt entries: `setting="default"` is what lmms-eval gives any model without an
  entry of its own (hourjax has none), `setting="llava_vid"` what LLaVA-Video-family models get.
- `paper`: the lmms-eval copy the papers' numbers came from (the one bundled with ProLongVid, run
  with its `llava_vid` model): Video-MME's older letter regex and "The best answer is:", 768
  frames for the subtitle lines, MLVU's older prompt and overall accuracy; no reasoning-tag
  stripping and no `until` stop string. LVBench is not in that copy: it follows lmms-eval 0.7.3.

A document is a `readers.Doc` (its `fields` are lmms-eval's dataset row). TempCompass answers the
rules cannot read go to a judge (an OpenAI-compatible endpoint, `hourjax.endpoint.ChatClient`),
as lmms-eval sends them to GPT; without one they are `unjudged`: counted apart, never guessed.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Callable, Sequence

import numpy as np

from hourjax.evaluation.readers import Doc

PROTOCOLS = ("lmms-eval", "paper")
SETTINGS = ("default", "llava_vid")


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str = "lmms-eval"
  setting: str = "default"

  def __post_init__(self):
    if self.name not in PROTOCOLS:
      raise ValueError(f"protocol {self.name!r}: expected one of {PROTOCOLS}")
    if self.setting not in SETTINGS:
      raise ValueError(f"setting {self.setting!r}: expected one of {SETTINGS}")
    if self.name == "paper" and self.setting != "llava_vid":
      object.__setattr__(self, "setting", "llava_vid")      # the papers ran lmms-eval's llava_vid

  @property
  def paper(self) -> bool:
    return self.name == "paper"


# -- prompts ------------------------------------------------------------------------------------

VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video and "
                        "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
SUBTITLE_HEADER = "This video's subtitles are listed below: \n"
NO_SUBTITLES = "No subtitles available"
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
LVB_POST = "Answer with the option's letter from the given choices directly.\n"
LVBENCH_POST = "\nAnswer the question with the option letter"
TEMPCOMPASS_POST = {"tempcompass_multi_choice": "\nPlease directly give the best option:",
                    "tempcompass_yes_no": "\nPlease answer yes or no:",
                    "tempcompass_caption_matching": "\nPlease directly give the best option:",
                    "tempcompass_captioning": ""}
MLVU_POST = "\nOnly give the best option.\nBest option: ("


def _srt_cues(path: str) -> list[tuple[float, float, str]]:
  """lmms-eval's .srt reading: blocks split on blank lines, >= 3 lines, the text lines joined by
  spaces; cues with the same (start, end) overwrite each other."""
  def seconds(t: str) -> float:
    h, m, s_ms = t.split(":")
    s, ms = s_ms.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
  cues: dict[tuple[float, float], str] = {}
  with open(path, encoding="utf-8") as f:
    for block in f.read().split("\n\n"):
      if block.strip():
        lines = block.split("\n")
        if len(lines) >= 3:
          start, end = lines[1].split(" --> ")
          cues[(seconds(start), seconds(end))] = " ".join(lines[2:])
  return [(s, e, text) for (s, e), text in cues.items()]


def subtitle_text(path: str, fps: float, total_frames: int, frame_num: int) -> str:
  """Video-MME's subtitle block as lmms-eval builds it: the cues shown at `frame_num` frames spread
  over the video (frame = int(seconds * fps)), each cue's first white-font text, in the order
  Python's `list(set(...))` gives (lmms-eval's; not chronological), joined by newlines. "No
  subtitles available" when there is no .srt file."""
  import os
  if not path or not os.path.exists(path):
    return NO_SUBTITLES
  with open(path, encoding="utf-8") as f:
    if not f.readlines():
      return ""
  cues = [(int(s * fps), int(e * fps), text) for s, e, text in _srt_cues(path)]
  frames = np.linspace(0, total_frames - 1, total_frames if frame_num == -1 else frame_num, dtype=int).tolist()
  shown = [i for f in frames for i, (s, e, _) in enumerate(cues) if s <= f < e]
  texts = []
  for i in list(set(shown)):
    found = _FONT.findall(cues[i][2])
    if found:
      texts.append(found[0])
  return "\n".join(texts)


def prompt(doc: Doc, protocol: Protocol = Protocol(), video_frames: tuple[float, int] = (0.0, 0)) -> str:
  """The task text lmms-eval gives the model for `doc`; `video_frames` = (fps, frame count) of the
  video, for Video-MME's subtitle lines."""
  d, task = doc.fields, doc.task
  if task in ("videomme", "videomme_w_subtitle"):
    body = f"{VIDEOMME_INSTRUCTION}\n{d['question']}\n" + "\n".join(str(o) for o in d["options"])
    if task == "videomme":
      post = "The best answer is:" if protocol.setting == "llava_vid" else (
          "\nAnswer with the option's letter from the given choices directly.")
      return f"{body}\n{post}"
    frame_num = 768 if protocol.paper or protocol.setting == "llava_vid" else 32
    subs = subtitle_text(doc.subtitles, *video_frames, frame_num)
    return f"{SUBTITLE_HEADER}{subs}\n{body}\nThe best answer is:"
  if task == "longvideobench_val_v":
    options = [d[f"option{i}"] for i in range(5) if d.get(f"option{i}") != "N/A"]
    lettered = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
    return f"{d['question']}\n{lettered}\n{LVB_POST}"
  if task == "lvbench":
    question = d["question"]
    if d.get("options"):
      question += "\n" + "\n".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(d["options"]))
    return question + LVBENCH_POST
  if task in TEMPCOMPASS_POST:
    return d["question"] + TEMPCOMPASS_POST[task]
  if task == "mlvu_dev":
    return f"\n{d['question']}\nOnly give the best option.\n" if protocol.paper else d["question"] + MLVU_POST
  raise ValueError(f"unknown task {task!r}")


def generation(task: str, protocol: Protocol = Protocol()) -> tuple[int, tuple[str, ...]]:
  """(max new tokens, stop strings): the task YAML's generation_kwargs; TempCompass sets none and
  takes the llava_vid wrapper's 1024. lmms-eval adds the stop string "\\n\\n" to every task; the
  papers' llava_vid wrapper ignores it."""
  tokens = {"longvideobench_val_v": 32}.get(task, 1024 if task.startswith("tempcompass") else 16)
  return tokens, (() if protocol.paper else ("\n\n",))


def until(text: str, stops: Sequence[str]) -> str:
  """The response cut at its first stop string (what generating until it gives, greedily)."""
  for s in stops:
    if s and s in text:
      text = text[:text.index(s)]
  return text


REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))


def clean(response: str, protocol: Protocol = Protocol()) -> str:
  """What lmms-eval does to an answer before scoring it: reasoning blocks removed (its command
  line's default tags; not in the papers' copy), then surrounding whitespace."""
  if not protocol.paper:
    for start, end in REASONING_TAGS:
      while start in response and end in response:
        i = response.find(start)
        j = response.find(end, i)
        if i == -1 or j == -1:
          break
        response = response[:i] + response[j + len(end):]
      if end in response and start not in response:
        response = response.rsplit(end, 1)[-1]
  return response.strip()


# -- answer extraction --------------------------------------------------------------------------

ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
         "space": 2, "fallback": 0}


def mcq_letter(response: str, choices: Sequence[str] = "ABCD") -> str:
  """lmms-eval 0.7.3's ranked multiple-choice extractor (`_task_utils/mcq_extract.py`): every
  place a choice letter could be the answer is a candidate of a kind; the highest-ranked kind
  wins, then the latest position. "" when nothing is found."""
  if not response or not response.strip():
    return ""
  text = response.strip()
  for c in ",.!?;:'\"":
    text = text.strip(c)
  text = f" {text} "
  found: list[tuple[str, int, str]] = []
  for form, kind in (("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren"),
                     ("{} ", "space")):
    found += [(ch, text.rfind(form.format(ch)), kind) for ch in choices if form.format(ch) in text]
  lower = text.lower()
  for phrase in ANSWER_PHRASES:
    at = lower.find(phrase)
    if at != -1:
      found += [(ch, text.find(ch, at + len(phrase)), "phrase") for ch in choices
                if text.find(ch, at + len(phrase)) != -1]
  bare = text.strip()
  found += [(ch, 0, "start") for ch in choices if bare.startswith(ch) and (len(bare) == 1 or not bare[1].isalpha())]
  found += [(ch, len(text) - 1, "end") for ch in choices
            if bare.endswith(ch) and (len(bare) == 1 or not bare[-2].isalpha())]
  if not found:
    found = [(ch, text.rfind(ch), "fallback") for ch in choices if ch in text]
  if not found:
    return ""
  return max(found, key=lambda c: (_RANK[c[2]], c[1]))[0]


# The papers' copy strips these (two pairs are glued together there by missing commas).
PAPER_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                  "The best option isThe correct option is", "Best answer:Best option:")
LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                "The correct option is", "Best answer:", "Best option:")


def regex_letter(response: str, letters: str = "ABCD", prefixes: Sequence[str] = PAPER_PREFIXES,
                 rng: random.Random | None = None, choices: Sequence[str] = ()) -> str:
  """The older lmms-eval extraction (the papers' Video-MME and MLVU; LongVideoBench's own parser
  in both protocols): answer phrases removed, then the first capital letter of `letters`
  anywhere; a long reply naming none, or no letter at all, gives "" (or, with `rng`,
  LongVideoBench's random pick among `choices`)."""
  s = response.strip()
  for p in prefixes:
    s = s.replace(p, "")
  found = re.search(f"[{letters}]", s)
  if found is None:     # covers "more than 10 words and no letter" as well
    return rng.choice(list(choices)) if rng is not None else ""
  return found.group(0)


# -- scoring ------------------------------------------------------------------------------------

def _tempcompass_instruction(kind: str) -> str:
  """TempCompass's judge instruction as lmms-eval's source spells it (an indented triple-quoted
  string whose lines are joined by backslashes)."""
  sentences = (f"You will receive a {kind}, the ground-truth answer and the prediction from a question "
               "answering (QA) model. ",
               "Your task is to determine whether QA model prediction is correct, based on the question and "
               "ground-truth answer. ",
               'If the prediction is correct, respond "Correct". If the prediction is incorrect, respond "Incorrect".')
  return "\n" + "".join(" " * 8 + s for s in sentences) + "\n" + " " * 8


CAPTION_JUDGE_LINES = (
    "You will receive a video description and a multi-choice question. Your task is to choose the correct answer "
    "and briefly explain the reason why you choose the answer. \\",
    "If none of the choice candidates are correct or the video description lacks enough information to answer the "
    'question, just answer "None of the choices are correct". \\',
    "Please organize your response in this format:", "```", "Reasoning: [Your reason to obtain the answer]",
    "Answer: [Your answer]", "```", "",
    "Here are some examples of video description, multi-choice question and the expected answer:", "```",
    "Video Description: A person is palying football.", "Multi-Choice Question:",
    "What is the person doing in the video?", "A. cooking", "B. palying football", "C. playing basketball",
    "D. reading book", "Reasoning: The video description mentions that the person is playing football.",
    "Answer: B. palying football", "", "Video Description: A bird is flying clockwise.", "Multi-Choice Question:",
    "In which direction is the bird flying?", "A. backwark", "B. counter-clockwise", "C. clockwise", "D. downward",
    "Reasoning: The video description mentions that the bird is flying clockwise", "Answer: C. clockwise", "",
    "Video Description: An air balloon is inflating.", "Multi-Choice Question:",
    "What is happening to the air balloon?", "A. exploding", "B. getting smaller", "C. flying",
    "Reasoning: The video description mentions that the air balloon is inflating, while none of the coices can be "
    "explained as inflating.", "Answer: None of the choices are correct", "```")


def _caption_instruction() -> str:
  text = "\n" + "\n".join((" " * 4 + line) if line else "" for line in CAPTION_JUDGE_LINES) + "\n" + " " * 4
  return text.replace(" \\\n" + " " * 4, " " + " " * 4)     # the source's line continuations


JUDGE_SYSTEM = "You are an AI assistant for question answering."
JUDGE_MODEL = "gpt-3.5-turbo-1106"
JUDGE_PARAMS = dict(max_tokens=128, temperature=1.0, top_p=1, presence_penalty=1)


def judge_request(doc: Doc, pred: str) -> str:
  """The user message lmms-eval sends its GPT judge for a TempCompass answer the rules missed."""
  d = doc.fields
  kind = {"tempcompass_multi_choice": ("multi-choice question", "Multi-Choice Question"),
          "tempcompass_yes_no": ("Yes/No question", "Yes/No Question"),
          "tempcompass_caption_matching": ("caption matching question", "Caption Matching Question")}
  if doc.task == "tempcompass_captioning":
    return f"{_caption_instruction()}\nVideo Description:{pred}\nMulti-Choice Question:\n{d['mc_question']}\nAnswer:"
  instruction, label = kind[doc.task]
  return (f"{_tempcompass_instruction(instruction)}\n{label}:\n{d['question']}\nGround-Truth Answer: {d['answer']}"
          f"\nModel Prediction: {pred}")


def _tc_rule(doc: Doc, pred: str) -> int | None:
  """TempCompass's hand-written matching: 1 / 0, or None where lmms-eval asks the judge."""
  d = doc.fields
  answer = d["answer"]
  if doc.task == "tempcompass_multi_choice":
    if pred == answer:
      return 1
    if pred in ("A", "B", "C", "D"):
      return int(pred == answer[0])
    if any(pred.startswith(f"{c}.") for c in "ABCD"):
      return int(pred.split(".")[0] == answer[0])
    if any(pred.startswith(f"{c})") for c in "ABCD"):
      return int(pred.split(")")[0] == answer[0])
    return None
  if doc.task == "tempcompass_yes_no":
    low = pred.lower()
    said = "yes" if low.startswith("yes") else "no" if low.startswith("no") else None
    return None if said is None else int(said == answer)
  if doc.task == "tempcompass_caption_matching":
    options = d["question"].split("\n")[1:]
    sentences = [o.split(": ")[1] for o in options]
    marks = [o.split(": ")[0] for o in options] + [
        o.split(": ")[0].replace("Sentence ", "").replace("Option ", "").replace("Caption ", "") for o in options]
    chosen = None
    for o in options:
      if o == pred:
        chosen = o
    for s in sentences:
      if s == pred or (") " in pred and s == pred.split(") ")[1]):
        chosen = s
    for m in marks:
      if m == pred or m == pred.replace(".", ""):
        chosen = m
    if chosen is None:
      return None
    return int(chosen == answer or chosen == answer.split(":")[0] or chosen == answer.split(": ")[1]
               or chosen == answer.split(": ")[0].split()[1])
  return None                    # captioning: always the judge


def judge_rating(doc: Doc, reply: str | None) -> int:
  """The judge's reply -> TempCompass's rating (lmms-eval's parsing)."""
  if doc.task == "tempcompass_captioning":
    if not reply or reply == "invalid_request_error":
      return -1
    answer = reply
    for line in reply.split("\n"):
      if "Answer" in line.strip():
        answer = line.strip().replace("Answer:", "").strip()
    count = sum(answer.count(p) for p in ("A.", "B.", "C.", "D."))
    return int(answer.split(". ")[0] == doc.fields["mc_answer"].split(". ")[0] and count == 1)
  if not reply or ("Correct" not in reply and "Incorrect" not in reply):
    raise ValueError(f"judge reply names neither Correct nor Incorrect: {reply!r}")
  if reply.startswith("Correct"):
    return 1
  if reply.startswith("Incorrect"):
    return 0
  return int("Incorrect" not in reply)


def metric(task: str, protocol: Protocol = Protocol()) -> str:
  """The lmms-eval metric name (its `,none` key stem) of a task."""
  if task.startswith("videomme"):
    return "videomme_percetion_score" if protocol.paper else "videomme_perception_score"
  return {"longvideobench_val_v": "lvb_acc", "lvbench": "lvbench_score", "mlvu_dev": "mlvu_percetion_score"}.get(
      task, "avg_accuracy")


def score(doc: Doc, response: str, protocol: Protocol = Protocol(), *, rng: random.Random | None = None,
          judge: Callable[[str], str] | None = None) -> dict[str, Any]:
  """One cleaned answer -> {"pred", "correct"} (+ "rating" for TempCompass; "unjudged": True when
  the answer needs a judge and none is given)."""
  d, task = doc.fields, doc.task
  if task.startswith("videomme"):
    pred = regex_letter(response) if protocol.paper else mcq_letter(response)
    return {"pred": pred, "correct": pred.lower() == d["answer"].lower()}
  if task == "longvideobench_val_v":
    choices = []
    for i in range(5):
      if d.get(f"option{i}") == "N/A":
        break
      choices.append(chr(65 + i))
    pred = regex_letter(response, "ABCDE", LVB_PREFIXES, rng or random.Random(0), choices)
    return {"pred": pred, "correct": pred == chr(65 + int(d["correct_choice"]))}
  if task == "lvbench":
    pred = mcq_letter(response)
    return {"pred": pred, "correct": pred == d["answer"]}
  if task == "mlvu_dev":
    pred = regex_letter(response) if protocol.paper else mcq_letter(response)
    return {"pred": pred, "correct": pred == d["answer"]}
  rating = _tc_rule(doc, response)
  if rating is not None:
    return {"pred": response, "rating": rating, "correct": rating == 1, "judged": False}
  if judge is None:
    return {"pred": response, "unjudged": True}
  request = judge_request(doc, response)
  reply = judge(request)
  rating = judge_rating(doc, reply)
  return {"pred": response, "rating": rating, "correct": rating == 1, "judged": True, "judge_reply": reply}
