"""Reading and writing checkpoint files tensor by tensor.

- `TorchCheckpoint`: a local PyTorch / HF directory (config.json + safetensors or .bin shards)
  or a single file. safetensors are memory-mapped by a small reader of our own, so bf16
  tensors stay bf16 (ml_dtypes) and nothing is read before it is asked for.
- `write_hf_dir`: safetensors shards (+ index) and config.json, flushing one shard at a time.
- `save_params` / `load_params`: an hourjax parameter checkpoint (Orbax) with its model config.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
from typing import Any, Iterable, Mapping

import ml_dtypes
import numpy as np

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
              "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class SafetensorsFile:
  """A memory-mapped .safetensors file; a truncated or malformed one is an error naming it."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    try:
      with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
          raise ValueError(f"header of {n} bytes but the file has {size}")
        self.header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    self.metadata = self.header.pop("__metadata__", None) or {}
    self._offset = 8 + n
    for key, info in self.header.items():
      start, end = info["data_offsets"]
      if info["dtype"] not in _ST_DTYPES:
        raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
      if self._offset + end > size or end - start != np.dtype(_ST_DTYPES[info["dtype"]]).itemsize * int(
          np.prod(info["shape"], dtype=np.int64)):
        raise ValueError(f"{path}: tensor {key} lies beyond the end of the file or has the wrong size "
                         f"(truncated? {size} bytes, tensor ends at {self._offset + end})")
    self._map = np.memmap(path, dtype=np.uint8, mode="r") if size > self._offset else None

  def keys(self) -> list[str]:
    return list(self.header)

  def get(self, key: str) -> np.ndarray:
    info = self.header[key]
    start, end = info["data_offsets"]
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    if start == end:
      return np.zeros(info["shape"], dtype)
    raw = self._map[self._offset + start:self._offset + end]
    return raw.view(dtype).reshape(info["shape"])


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None):
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  for k, a in arrays.items():
    header[k] = {"dtype": _ST_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays.values():
      f.write(a.tobytes())


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # only for .bin checkpoints
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


# Files beside the weights in a training output directory that are not weights.
_NOT_WEIGHTS = ("training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin")


def weight_files(path: str) -> list[str]:
  """The weight files of a checkpoint directory: those its index names, else every safetensors
  file, else the .bin files that hold weights (not training_args.bin, optimizer states ...)."""
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if os.path.exists(os.path.join(path, index)):
      try:
        names = sorted(set(json.load(open(os.path.join(path, index)))["weight_map"].values()))
      except (ValueError, KeyError) as e:
        raise ValueError(f"{os.path.join(path, index)}: not a weight index ({e})") from None
      missing = [n for n in names if not os.path.exists(os.path.join(path, n))]
      if missing:
        raise FileNotFoundError(f"{os.path.join(path, index)} names files that are missing: {missing}")
      return [os.path.join(path, n) for n in names]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    files = [f for f in sorted(glob.glob(os.path.join(path, "*.bin")))
             if os.path.basename(f) not in _NOT_WEIGHTS and not os.path.basename(f).startswith("rng_state")]
  if not files:
    raise FileNotFoundError(f"no *.safetensors or *.bin weights in {path}")
  return files


class TorchCheckpoint:
  """All tensors of a checkpoint directory or file, read lazily, with its config.json (a
  directory must have one)."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise FileNotFoundError(f"checkpoint {path} does not exist")
    files = [path] if os.path.isfile(path) else weight_files(path)
    self.path = path
    cfg_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
    if os.path.isdir(path) and not os.path.exists(cfg_path):
      raise FileNotFoundError(f"checkpoint {path} has no config.json (needed for the model's sizes)")
    try:
      self.config = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    except ValueError as e:
      raise ValueError(f"{cfg_path}: not JSON ({e})") from None
    self._where: dict[str, Any] = {}
    for f in files:
      if f.endswith(".safetensors"):
        st = SafetensorsFile(f)
        for k in st.keys():
          self._where[k] = st
      else:
        import pickle
        import torch
        try:
          sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
          raise ValueError(f"{f}: not a readable PyTorch weights file ({str(e).splitlines()[0]})") from None
        if not isinstance(sd, dict):
          raise ValueError(f"{f}: holds a {type(sd).__name__}, not a state dict")
        for k in sd:
          self._where[k] = sd

  def keys(self) -> list[str]:
    return list(self._where)

  def get(self, key: str) -> np.ndarray:
    src = self._where[key]
    return src.get(key) if isinstance(src, SafetensorsFile) else _torch_to_numpy(src[key])


def write_hf_dir(out_dir: str, tensors: Iterable[tuple[str, np.ndarray]], config: Mapping[str, Any],
                 max_shard_bytes: int = 4 << 30, dtype: Any = None) -> list[str]:
  """Write `model.safetensors` (or numbered shards + index) and config.json; returns file names."""
  os.makedirs(out_dir, exist_ok=True)
  shards, current, size, weight_map = [], {}, 0, {}

  def flush():
    nonlocal current, size
    if current:
      name = f"shard-{len(shards):05d}.safetensors"
      write_safetensors(os.path.join(out_dir, name), current)
      shards.append((name, list(current)))
      current, size = {}, 0

  for key, arr in tensors:
    arr = np.asarray(arr)
    if dtype is not None and (np.issubdtype(arr.dtype, np.floating) or arr.dtype == ml_dtypes.bfloat16):
      arr = arr.astype(dtype)
    if size and size + arr.nbytes > max_shard_bytes:
      flush()
    current[key] = arr
    size += arr.nbytes
  flush()
  names = []
  for i, (name, keys) in enumerate(shards):
    final = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    os.replace(os.path.join(out_dir, name), os.path.join(out_dir, final))
    names.append(final)
    weight_map.update({k: final for k in keys})
  if len(shards) > 1:
    total = sum(os.path.getsize(os.path.join(out_dir, n)) for n in names)
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(dict(config), f, indent=2)
  return names


# ---------------------------------------------------------------------------------------------
# hourjax parameter checkpoints.

META = "hourjax.json"


def save_params(path: str, params: Mapping, kind: str, model_config: Any,
                source_config: Mapping | None = None, source_kind: str | None = None) -> None:
  """Orbax checkpoint of `params` under path/params plus path/hourjax.json describing the model.

  source_config: the HF config the weights came from, kept so an export can restore it.
  """
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(path, "params"), params, force=True)
  from hourjax.convert.layout import is_scanned
  meta = {"kind": kind, "config": dataclasses.asdict(model_config), "scan_layers": is_scanned(params),
          "source_kind": source_kind or kind, "source_config": dict(source_config or {})}
  with open(os.path.join(path, META), "w") as f:
    json.dump(meta, f, indent=2)


def read_meta(path: str) -> dict:
  meta_path = os.path.join(path, META)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path} is not an hourjax checkpoint (no {META})")
  return json.load(open(meta_path))


def load_params(path: str, abstract: Any = None, *, sharding: Any = None) -> Any:
  """Restore params onto `abstract`'s shapes/shardings when given, else as saved (shapes and
  dtypes; with `sharding`, e.g. one device's, every array placed on it instead of the mesh it
  was saved from).

  If `abstract` wants the other layer layout (scanned vs unrolled) the checkpoint is restored
  as saved, re-laid out, then placed on `abstract`'s shardings.
  """
  import jax
  import orbax.checkpoint as ocp
  from hourjax.convert.layout import is_scanned, to_layout
  saved_scanned = read_meta(path).get("scan_layers", False)
  relayout = abstract is not None and is_scanned(abstract) != saved_scanned
  where = os.path.join(os.path.abspath(path), "params")
  with ocp.StandardCheckpointer() as ckpt:
    if abstract is None and sharding is not None:
      saved = ckpt.metadata(where).item_metadata
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved)
    params = ckpt.restore(where, None if relayout else abstract)
  if not relayout:
    return params
  params = to_layout(params, is_scanned(abstract))
  return jax.tree.map(lambda a, t: jax.device_put(a, getattr(t, "sharding", None)), params, abstract)

