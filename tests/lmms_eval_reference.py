"""lmms-eval 0.7.3's own task code, as the reference the evaluation is tested against.

The wheel comes from the package index (`pip download --no-deps lmms-eval==0.7.3`, cached) and is
unpacked, never installed. A task's `utils.py` is executed from its own file with only the
modules it cannot import here replaced by small stand-ins: loguru, cv2 (which reports the fps
and frame count the test registers, or 0 like an unreadable file), decord and datasets (never
reached by the functions used), and empty shells for the `lmms_eval` packages, whose
`__init__`s import torch-side machinery. The real `mcq_extract.py` and `api/reasoning.py` are
loaded from the wheel. TempCompass's `requests` goes to the test's judge, or fails as offline.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import sys
import types
import zipfile

import yaml

from tools import wheels

SPEC = "lmms-eval==0.7.3"
REASONING_TAGS = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]   # its command line's default
VIDEOS: dict[str, tuple[float, int]] = {}     # path -> (fps, frames) for the cv2 stand-in


def source() -> str:
  """The unpacked package directory (`.../lmms_eval`)."""
  out = os.path.join(wheels.cache_dir(), "lmms_eval-0.7.3")
  if not os.path.exists(os.path.join(out, "lmms_eval", "tasks", "videomme", "utils.py")):
    with zipfile.ZipFile(wheels.fetch(SPEC)) as z:
      members = [m for m in z.namelist() if m.startswith("lmms_eval/") and (
          m.startswith("lmms_eval/tasks/") or m.startswith("lmms_eval/api/") or m == "lmms_eval/utils.py")]
      z.extractall(out + ".tmp", members)
    os.replace(out + ".tmp", out) if not os.path.exists(out) else None
  return os.path.join(out, "lmms_eval")


def _module(name: str, **attrs) -> types.ModuleType:
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  sys.modules[name] = mod
  return mod


def _shell(name: str, path: str) -> None:
  mod = sys.modules.get(name) or _module(name)
  mod.__path__ = [path]
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(sys.modules[parent], child, mod)


def _exec(name: str, path: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  return mod


class _Capture:
  def __init__(self, path):
    self.fps, self.frames = VIDEOS.get(os.path.abspath(str(path)), (0.0, 0))

  def get(self, prop):
    return {5: self.fps, 7: float(self.frames)}.get(prop, 0.0)


def _stand_ins(pkg: str) -> None:
  if "lmms_eval.api.reasoning" in sys.modules:
    return
  for name in ("loguru", "cv2", "decord", "datasets"):
    if importlib.util.find_spec(name) is not None and name not in ("cv2",):
      continue
    if name == "loguru":
      _module(name, logger=logging.getLogger("lmms_eval"))
    elif name == "cv2":
      _module(name, CAP_PROP_FPS=5, CAP_PROP_FRAME_COUNT=7, VideoCapture=_Capture)
    elif name == "decord":
      _module(name, VideoReader=None, cpu=lambda *a: None)
    else:
      _module(name, Dataset=list, DatasetDict=dict)
  _shell("lmms_eval", pkg)
  for sub in ("api", "tasks", "tasks/_task_utils"):
    _shell("lmms_eval." + sub.replace("/", "."), os.path.join(pkg, sub))
  # `lmms_eval.utils` imports torch and transformers at the top; the tasks use two small functions.
  utils_src = open(os.path.join(pkg, "utils.py")).read()
  import ast
  tree = ast.parse(utils_src)
  keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("resolve_cache_dir", "sanitize_list")]
  utils = _module("lmms_eval.utils")
  exec("import os\nfrom typing import Optional\n", utils.__dict__)
  exec(compile(ast.Module(body=keep, type_ignores=[]), os.path.join(pkg, "utils.py"), "exec"), utils.__dict__)
  sys.modules["lmms_eval"].utils = utils
  _exec("lmms_eval.api.reasoning", os.path.join(pkg, "api", "reasoning.py"))
  _exec("lmms_eval.tasks._task_utils.mcq_extract", os.path.join(pkg, "tasks", "_task_utils", "mcq_extract.py"))
  _exec("lmms_eval.tasks._task_utils.file_utils", os.path.join(pkg, "tasks", "_task_utils", "file_utils.py"))


def task_utils(task_dir: str, hf_home: str, judge=None) -> types.ModuleType:
  """lmms_eval/tasks/<task_dir>/utils.py, imported with HF_HOME = hf_home (several read it at
  import). TempCompass's judge: `judge(user_prompt) -> reply`, or None: the network fails."""
  pkg = source()
  _stand_ins(pkg)
  os.environ["HF_HOME"] = hf_home
  _shell(f"lmms_eval.tasks.{task_dir}", os.path.join(pkg, "tasks", task_dir))
  # Some tasks import torch at the top and never use it in the functions tested; where torch is
  # not installed (the newest environment) an empty stand-in serves that import, only for it.
  stand_in = importlib.util.find_spec("torch") is None
  if stand_in:
    _module("torch")
  try:
    mod = _exec(f"lmms_eval.tasks.{task_dir}.utils", os.path.join(pkg, "tasks", task_dir, "utils.py"))
  finally:
    if stand_in:
      sys.modules.pop("torch", None)
  if task_dir == "tempcompass":
    def post(url, headers=None, data=None, **kw):
      if judge is None:
        raise ConnectionError("offline")
      body = json.loads(data)
      reply = judge(body["messages"][-1]["content"])
      return types.SimpleNamespace(content=json.dumps({"choices": [{"message": {"content": reply}}],
                                                       "usage": {}}).encode())
    mod.requests = types.SimpleNamespace(post=post)
    mod.time = types.SimpleNamespace(sleep=lambda s: None)
  return mod


def _yaml(path: str) -> dict:
  class Loader(yaml.SafeLoader):
    pass
  Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
  cfg = yaml.load(open(path), Loader=Loader)
  for inc in ([cfg.pop("include")] if isinstance(cfg.get("include"), str) else cfg.pop("include", []) or []):
    cfg = {**_yaml(os.path.join(os.path.dirname(path), inc)), **cfg}
  return cfg


def task_config(yaml_path: str) -> dict:
  return _yaml(os.path.join(source(), "tasks", yaml_path))


def kwargs(yaml_path: str, model: str | None = None) -> dict | None:
  """The `lmms_eval_specific_kwargs` lmms-eval passes a model (its `_prepare_model_specific_config`):
  the model's own entry, or else the `default` entry merged into the whole dict."""
  kw = copy.deepcopy(task_config(yaml_path).get("lmms_eval_specific_kwargs"))
  if kw is not None:
    if model in kw:
      kw = kw[model]
    elif "default" in kw:
      kw.update(kw["default"])
  return kw


def text(fn, doc: dict, kw: dict | None) -> str:
  return fn(doc, kw) if kw is not None else fn(doc)


def process(fn, doc: dict, response: str, strip_tags: bool = True) -> dict:
  """What the evaluator does before process_results: reasoning tags stripped, then `.strip()`."""
  reasoning = sys.modules["lmms_eval.api.reasoning"]
  if strip_tags:
    response = reasoning.strip_reasoning_tags(response, REASONING_TAGS)
  return fn(doc, [response.strip()])
