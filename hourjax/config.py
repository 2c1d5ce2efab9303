"""From an ml_collections config to the frozen model dataclasses, validated once."""
from __future__ import annotations

from typing import Any, Mapping

from hourjax.models import build
from hourjax.models.hour_llava import HourLlavaConfig


def model_config(model: Mapping[str, Any]) -> HourLlavaConfig:
  """`cfg.model` (ConfigDict or dict) -> HourLlavaConfig; unknown or inconsistent fields fail here."""
  d = model.to_dict() if hasattr(model, "to_dict") else dict(model)
  try:
    return build.config_from_dict("hour_llava", d)
  except TypeError as e:  # an unknown field name
    raise ValueError(f"bad model config: {e}") from None
