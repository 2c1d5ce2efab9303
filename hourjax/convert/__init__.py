"""PyTorch <-> hourjax weight conversion (see `api` for the entry points)."""
from hourjax.convert.api import Converted, detect_kind, export_torch, import_torch
from hourjax.convert.io import load_params, read_meta, save_params
from hourjax.convert.rules import ConversionError

__all__ = ["Converted", "ConversionError", "detect_kind", "export_torch", "import_torch",
           "load_params", "read_meta", "save_params"]
