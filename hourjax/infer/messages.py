"""OpenAI chat messages -> the prompt Hour-LLaVA was trained on, and its visual input.

    prompt = read_prompt(loaded, [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "file:///data/lecture.mp4"}},
        {"type": "text", "text": "What is written on the board?"}]}])
    prompt.sample, prompt.modality         # what `collate` and the engine take

- A message's `content` is a string or a list of parts: `text`, `image_url` and `video_url`
  (vLLM's name for a video part; `video` with a `video` field is also read). A URL is a local
  path, a `file://` URL or, for images, a `data:image/...;base64,` URL.
- One visual input per request, in the first user message, where training puts it: a video
  (frames by the official 1-FPS rule, encoded `chunk` frames at a time, the official time
  instruction first), one image (anyres crops, as the official image path), or several images,
  taken as the frames of a video at 1 FPS (how an annotation pipeline sends a clip's frames). A
  ProLongVid model reads its own way: `fixed_frames` frames by linspace and no time
  instruction; several images as a multi-image sample (one `<image>` each).
- Leading `system` (or `developer`) messages replace the default system prompt; the
  conversation must end with a user message. The prompt is tokenized exactly as training
  tokenizes a record (`chat.generation_prompt`).

Anything a request gets wrong raises `RequestError` naming it (the server answers 400).
"""
from __future__ import annotations

import base64
import dataclasses
import io
import os
import urllib.parse
from typing import Any, Sequence

import numpy as np

from hourjax.constants import IMAGE
from hourjax.data import anyres, chat, samples, video
from hourjax.infer.encode import frame_features, video_features
from hourjax.models.prolongvid import ProLongVidConfig


class RequestError(ValueError):
  """A request the server cannot answer as asked: `status` and `param` for the error body."""

  def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
    super().__init__(message)
    self.param, self.status, self.code = param, status, code


@dataclasses.dataclass(frozen=True)
class Prompt:
  sample: dict          # input_ids, labels (all -100) and `features` or `pixels` (none for text)
  modality: str         # "video", "image" or "text"
  frames: int           # visual frames (1 for an image, 0 for text)


@dataclasses.dataclass(frozen=True)
class VisualOptions:
  chunk: int = 128               # frames per SigLIP call
  min_frames: int = 128          # the official rule's minimum frame count
  resample: str = "pil"          # or "swscale"
  time_instruction: bool = True  # the official "The video lasts for ..." before the question
                                 # (Hour-LLaVA; ProLongVid's model never had one)
  fixed_frames: int = 192        # ProLongVid's model: this many frames by linspace over the video


def local_path(url: str, what: str) -> str:
  """A local path or file URL -> an existing file's path (RequestError otherwise)."""
  if not isinstance(url, str) or not url:
    raise RequestError(f"{what}: expected a URL string", "messages")
  parsed = urllib.parse.urlparse(url)
  if parsed.scheme == "file":
    path = urllib.parse.unquote(parsed.path)
  elif parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
    path = url
  else:
    raise RequestError(f"{what} {url[:80]!r}: only local paths, file:// URLs and (images) data: URLs "
                       "are read", "messages")
  if not os.path.isfile(path):
    raise RequestError(f"{what} {path}: no such file", "messages", code="media_not_found")
  return path


def read_image(url: str, size: int) -> np.ndarray:
  """An image part's URL -> uint8 [size, size, 3] by the official plain resize (PIL bicubic)."""
  return _decode_image(url, lambda source: samples.read_image(source, size)[0])   # the training pipeline's rule


def open_image(url: str) -> Any:
  """An image part's URL -> the decoded RGB image (PIL), for anyres crops."""
  return _decode_image(url, samples.open_image)


def _decode_image(url: str, decode: Any) -> Any:
  from PIL import UnidentifiedImageError
  if isinstance(url, str) and url.startswith("data:"):
    header, _, payload = url.partition(",")
    if ";base64" not in header or not header[5:].startswith("image/"):
      raise RequestError(f"image data URL {header[:40]!r}: expected data:image/...;base64,", "messages")
    try:
      source: Any = io.BytesIO(base64.b64decode(payload, validate=True))
    except ValueError:
      raise RequestError("image data URL: invalid base64", "messages") from None
  else:
    source = local_path(url, "image")
  try:
    return decode(source)
  except (UnidentifiedImageError, OSError) as e:
    raise RequestError(f"image: cannot decode it ({e})", "messages") from None


def _parts(content: Any, i: int) -> list[dict]:
  if content is None:                 # an assistant turn that only called tools
    return []
  if isinstance(content, str):
    return [{"type": "text", "text": content}]
  if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
    raise RequestError(f"messages[{i}].content: expected a string or a list of content parts", "messages")
  return content


def _url(part: dict, kind: str, i: int) -> str:
  value = part.get(kind) if kind in part else part.get(kind.split("_")[0])
  url = value.get("url") if isinstance(value, dict) else value
  if not isinstance(url, str):
    raise RequestError(f"messages[{i}]: a {part.get('type')} part without a url", "messages")
  return url


def read_prompt(loaded: Any, messages: Sequence[dict], options: VisualOptions = VisualOptions()) -> Prompt:
  """The request's messages -> the sample the engine batches (RequestError naming what is wrong)."""
  if not isinstance(messages, list) or not messages:
    raise RequestError("messages: expected a non-empty list", "messages")
  system, turns, videos, images = None, [], [], []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
      raise RequestError(f"messages[{i}]: expected a role of system, developer, user or assistant", "messages")
    texts = []
    for part in _parts(m.get("content"), i):
      kind = part.get("type")
      if kind == "text" and isinstance(part.get("text"), str):
        texts.append(part["text"])
      elif kind in ("image_url", "video_url", "video"):
        if m["role"] != "user" or any(t["role"] == "user" for t in turns):
          raise RequestError(f"messages[{i}]: images and videos are read only in the first user message, "
                             "where training puts them", "messages")
        (images if kind == "image_url" else videos).append(_url(part, "video_url" if kind == "video" else kind, i))
      else:
        raise RequestError(f"messages[{i}]: unsupported content part {str(kind)[:40]!r}", "messages")
    text = "\n".join(texts)
    if m["role"] in ("system", "developer"):
      if turns:
        raise RequestError(f"messages[{i}]: system messages come first", "messages")
      system = text if system is None else f"{system}\n{text}"
    else:
      turns.append({"role": m["role"], "content": text})
  if not turns or turns[-1]["role"] != "user":
    raise RequestError("messages: the conversation must end with a user message", "messages")
  if videos and images or len(videos) > 1:
    raise RequestError("messages: one visual input per request (a video, an image or the frames of one "
                       "video as images)", "messages")

  tok, size = loaded.tokenizer, loaded.cfg.vision.image_size
  prolongvid = isinstance(loaded.cfg, ProLongVidConfig)
  sample, modality, frames, duration = {}, "text", 0, None
  placeholders = 1
  if videos:
    path = local_path(videos[0], "video")
    try:
      info = video.probe(path)
      indices = (video.fixed_frame_indices(info.frames, options.fixed_frames) if prolongvid else
                 video.official_frame_indices(info.frames, info.fps, min_frames=options.min_frames))
      sample["features"] = video_features(loaded.model, loaded.params, path, indices, size, options.chunk,
                                          resample=options.resample)
    except video.VideoError as e:
      raise RequestError(f"video: {e}", "messages", code="invalid_video") from None
    modality, frames, duration = "video", len(indices), info.duration
  elif len(images) == 1 or images and prolongvid:
    # anyres crops of one image; ProLongVid reads several images as one crop each
    sample["pixels"], sample["images"] = anyres.crops([open_image(u) for u in images], size)
    modality, frames, placeholders = "image", len(sample["pixels"]), len(images)
  elif images:
    pixels = np.stack([read_image(u, size) for u in images])
    sample["features"] = frame_features(loaded.model, loaded.params, pixels, min(options.chunk, len(pixels)))
    modality, frames, duration = "video", len(images), float(len(images))
  if frames:
    first = next(i for i, t in enumerate(turns) if t["role"] == "user")
    turns[first] = {**turns[first], "content": f"{IMAGE}\n" * placeholders + turns[first]["content"]}
    if modality == "video" and options.time_instruction and not prolongvid:
      turns = turns[:first] + chat.with_time_instruction(turns[first:], duration, frames)
  ids = chat.generation_prompt(tok, chat.normalise_placeholders(turns), has_image=bool(frames),
                               **({} if system is None else {"system": system}))
  sample.update(input_ids=ids, labels=np.full(len(ids), -100, np.int32))
  return Prompt(sample, modality, frames)
