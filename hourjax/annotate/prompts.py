"""The prompts of VideoMarathon's pipeline, one builder per stage.

The paper shows its prompts only as images (App. A Figures 5-10). These follow its text (§3,
App. A.1): what each stage is given and what it must produce. Every prompt asks for one JSON
object whose schema the stage's validator checks, so a malformed answer is re-asked.
"""
from __future__ import annotations

import json
from typing import Sequence

from hourjax.annotate.tasks import PERSPECTIVES, TOPICS

SYSTEM = ("You annotate videos for training a video language model. Answer with one JSON object "
          "and nothing else.")


def _stamp(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def clip_caption(start: float, end: float) -> str:
  """Asked with the clip's frames as images (chronological)."""
  aspects = "\n".join(f'- "{k}": {v}' for k, v in PERSPECTIVES.items())
  return (f"The images are frames of one video clip from {_stamp(start)} to {_stamp(end)}, in "
          f"order. Describe the clip from each of these perspectives:\n{aspects}\n"
          f"Return {{{', '.join(f'{chr(34)}{k}{chr(34)}: string' for k in PERSPECTIVES)}}}. "
          "Describe only what the frames show.")


def _timed(items: Sequence[dict], key: str) -> str:
  """One "[start-end] text" line per item, in order."""
  return "\n".join(f"[{_stamp(x['start'])}-{_stamp(x['end'])}] {x[key]}" for x in items)


def _clips_text(clips: Sequence[dict], keys: Sequence[str] = tuple(PERSPECTIVES)) -> str:
  return "\n".join(f"[{_stamp(c['start'])}-{_stamp(c['end'])}] "
                   + " ".join(f"{k}: {c['caption'][k]}" for k in keys) for c in clips)


def event_split(clips: Sequence[dict], duration: float) -> str:
  return ("Below are the captions of a video's consecutive clips, in chronological order. Split "
          "the video into events: maximal stretches of time about one coherent activity or "
          f"situation. The video lasts {duration:.0f} seconds; events are in order, do not "
          "overlap, and lie within the video.\n"
          f"{_clips_text(clips, ('summary', 'action', 'scene'))}\n"
          'Return {"events": [{"start": seconds, "end": seconds, "title": string}, ...]}.')


def event_summary(event: dict, clips: Sequence[dict], before: str | None, after: str | None) -> str:
  context = "".join([f"The previous event: {before}\n" if before else "",
                     f"The next event: {after}\n" if after else ""])
  return (f"Summarise one event of a video, from {_stamp(event['start'])} to "
          f"{_stamp(event['end'])} (\"{event['title']}\"). Its clip captions from six "
          f"perspectives, in order:\n{_clips_text(clips)}\n{context}"
          'Return {"summary": string}: what happens in the event, in a short paragraph, '
          "consistent with the neighbouring events.")


def global_summary(events: Sequence[dict], duration: float) -> str:
  lines = _timed(events, "summary")
  return (f"A video of {duration:.0f} seconds consists of these events, in order:\n{lines}\n"
          'Return {"summary": string}: a description of the whole video that follows its events '
          "in order.")


def qa(topic: str, clips: Sequence[dict], global_caption: str, per_format: int,
       examples: Sequence[dict] = ()) -> str:
  """QA generation for one topic: instructions, the topic's task definitions, the topic's clip
  captions in order, the global caption and QA examples (paper §3)."""
  tasks = {t: d for t, d in TOPICS[topic].items() if t != "Overall Summarization"}
  defs = "\n".join(f'- "{t}": {d}' for t, d in tasks.items())
  key = "summary" if topic == "event" else topic
  shots = "".join(f"\nExample: {json.dumps(e, ensure_ascii=False)}" for e in examples)
  return (f"Write question-answer pairs about a video for the topic \"{topic}\". Each pair tests "
          f"one of these tasks:\n{defs}\nThe video's clip captions ({key}), in order:\n"
          f"{_clips_text(clips, (key,))}\nThe whole video: {global_caption}\n"
          f"Write {per_format} open-ended and {per_format} multiple-choice pairs. Questions must be "
          "answerable from the video alone; refer to moments by what happens, not by caption "
          "text. Multiple-choice questions have 4 options, exactly one correct, and the answer is "
          f"its letter.{shots}\n"
          'Return {"open_ended": [{"task": string, "question": string, "answer": string}, ...], '
          '"multiple_choice": [{"task": string, "question": string, "options": [string, ...], '
          '"answer": "A"|"B"|"C"|"D"}, ...]}.')


# -- ProLongVid (paper §3.2-3.4) ---------------------------------------------------------------

# Its four QA task types (paper §3.4), with the definitions the QA prompts carry.
PROLONGVID_TASKS = {
    "Video Summarization": "a concise summary of the video content",
    "General Video QA": "a question about objects, attributes, actions, trajectories or reasoning "
                        "grounded in the video's details, and its answer",
    "Creative Writing": "imaginative content inspired by the video (a story, a poem, an advertisement)",
    "Temporal Understanding": "a question about the order, timing or causes of events in the video, "
                              "and its answer",
}


def frame_caption() -> str:
  """Asked with one frame (the segmentation's per-frame caption)."""
  return 'Describe this video frame in one sentence. Return {"caption": string}.'


def segment_caption(start: float, end: float, whole: bool) -> str:
  """Asked with the segment's frames as images, in order."""
  what = "a whole video" if whole else f"one segment of a video, from {_stamp(start)} to {_stamp(end)}"
  return (f"The images are frames of {what}, in order. Describe in detail what happens: the scene, "
          "the objects and people, their attributes and actions, and how things change over time. "
          'Return {"caption": string}.')


def video_caption(segments: Sequence[dict], duration: float) -> str:
  lines = _timed(segments, "caption")
  return (f"A video of {duration:.0f} seconds consists of these segments, described in order:\n{lines}\n"
          "Write one dense caption of the whole video that follows the segments in order and connects "
          'them. Return {"caption": string}.')


def prolongvid_qa(strategy: str, tasks: Sequence[str], global_caption: str, segments: Sequence[dict],
                  count: int) -> str:
  """QA generation by one of the paper's input strategies: "global" (the video's description),
  "segments" (several segments' descriptions with their times: temporal relations across them)
  or "segment" (one segment's description, with the global one as background)."""
  defs = "\n".join(f'- "{t}": {PROLONGVID_TASKS[t]}' for t in tasks)
  local = _timed(segments, "caption")
  source = {"global": f"The video's description:\n{global_caption}",
            "segments": f"Descriptions of the video's segments, in order:\n{local}",
            "segment": f"The whole video, as background: {global_caption}\nOne of its segments, in "
                       f"detail:\n{local}\nAsk about the details of this segment."}[strategy]
  return (f"{source}\nWrite {count} question-answer pairs about the video, each of one of these task "
          f"types:\n{defs}\nQuestions must be answerable from the video alone; refer to moments by what "
          'happens. Return {"qa": [{"task": string, "question": string, "answer": string}, ...]}.')
