"""Run configs: load a config file (`path.py:arg`), apply `key=value` overrides, and turn
`cfg.model` into the frozen model dataclasses, validated once at start-up."""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Mapping, Sequence

import ml_collections

from hourjax.models import build
from hourjax.models.hour_llava import HourLlavaConfig


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`configs/hour_llava.py:7b` -> get_config("7b"), then overrides like `model.llm.remat=full`
  (values parsed as Python literals, else kept as strings); an unknown key fails here."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} not found (expected path/to/config.py[:arg])")
  module_spec = importlib.util.spec_from_file_location("hourjax_run_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  cfg = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not key=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
      if p not in node:
        raise ValueError(f"override {item!r}: {key} is not a config field")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"override {item!r}: {key} is not a config field")
    node[leaf] = value
  return cfg


def model_config(model: Mapping[str, Any]) -> HourLlavaConfig:
  """`cfg.model` (ConfigDict or dict) -> HourLlavaConfig; unknown or inconsistent fields fail here."""
  d = model.to_dict() if hasattr(model, "to_dict") else dict(model)
  try:
    return build.config_from_dict("hour_llava", d)
  except TypeError as e:  # an unknown field name
    raise ValueError(f"bad model config: {e}") from None
