"""Run configs: load a config file (`path.py:arg`), apply overrides (`--config.key=value`, or the
older `key=value`), and turn `cfg.model` into the frozen model dataclasses, validated once."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ml_collections

from hourjax.models import build
from hourjax.models.hour_llava import HourLlavaConfig
from hourjax.models.prolongvid import ProLongVidConfig


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`configs/hour_llava.py:7b` -> get_config("7b"), then overrides, parsed by
  `ml_collections.config_flags` by the type of the field they replace: `--config.model.llm.remat=full`
  (big_vision's form) or the older `model.llm.remat=full`. An unknown field or a value of the
  wrong type fails here, naming it."""
  from absl import flags
  from ml_collections import config_flags
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} not found (expected path/to/config.py[:arg])")
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r} is not key=value")
  argv = ["hourjax", f"--config={spec}"] + [o if o.startswith("--config.") else f"--config.{o}" for o in overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "the run config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
  except (AttributeError, KeyError):
    raise ValueError(f"config {spec}: {_unknown_field(spec, overrides)}") from None
  except (flags.Error, TypeError) as e:
    raise ValueError(f"config {spec}: {' '.join(str(e).split())}") from None
  cfg = values.config
  cfg.unlock()
  return cfg


def _unknown_field(spec: str, overrides: Sequence[str]) -> str:
  """Which override names a field the config does not have."""
  import difflib
  import importlib.util
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("hourjax_run_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  cfg = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key = item.removeprefix("--config.").partition("=")[0]
    node = cfg
    for i, part in enumerate(key.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        near = difflib.get_close_matches(part, list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else [])
        hint = f" (did you mean {'.'.join(key.split('.')[:i] + [near[0]])}?)" if near else ""
        return f"{key} is not a config field{hint}"
      node = node[part]
  return "an override names an unknown field"


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """A command line -> (the command's own arguments, its `--config.key=value` overrides; the
  form `--config.key value` is accepted too)."""
  own, overrides, args = [], [], list(argv)
  while args:
    arg = args.pop(0)
    if arg.startswith("--config."):
      overrides.append(arg if "=" in arg or not args else f"{arg}={args.pop(0)}")
    else:
      own.append(arg)
  return own, overrides


def model_kind(model: Mapping[str, Any]) -> str:
  """The run's model: `cfg.model.kind` ("hour_llava" when absent, or "prolongvid")."""
  kind = model.get("kind", "hour_llava")
  if kind not in build.VISUAL_KINDS:
    raise ValueError(f"model.kind={kind!r}: expected one of {build.VISUAL_KINDS}")
  return kind


def model_config(model: Mapping[str, Any]) -> HourLlavaConfig | ProLongVidConfig:
  """`cfg.model` (ConfigDict or dict) -> the model config of its `kind`; unknown or inconsistent
  fields fail here."""
  d = model.to_dict() if hasattr(model, "to_dict") else dict(model)
  kind = model_kind(d)
  d.pop("kind", None)
  try:
    return build.config_from_dict(kind, d)
  except TypeError as e:  # an unknown field name
    raise ValueError(f"bad model config: {e}") from None
