"""Long documents for ProLongVid's context-extension stage: documents -> tokens -> sequences of
exactly `seq_len` tokens packed from consecutive documents, with segment ids so that attention
and the loss never cross a document boundary. Deterministic and resumable like the video
pipeline: one seeded Grain graph whose iterator state goes into every checkpoint.

    from hourjax.data import text
    ds = text.dataset(["/data/slimpajama/*.jsonl"], "/ckpt/tokenizer", seq_len=32768, batch_size=8, seed=0)
    batch, meta = next(iter(ds))   # PackedBatch: input_ids, labels, positions, segment_ids [8, 32768]

Documents: JSONL lines (`{"text": ...}`, SlimPajama's format) or ArrayRecord records (the same
JSON, or raw UTF-8 text). Each document is tokenized and ends with the tokenizer's EOS token;
documents are concatenated in shuffled order and cut every `seq_len` tokens (concat-then-split:
a long document continues in the next sequence, where its positions restart at 0). In a
sequence, segment k+1 is the k-th document piece, 0 is padding; positions count from 0 in each
piece; the first token of a piece is not a target, so no token is predicted across documents.
`packing="continuous"` is EasyContext's variant instead: one segment per sequence, positions
0..seq_len-1 continuing across documents, every token after the first a target (the EOS
between documents is all that separates them).

Per-source length upsampling (Fu et al. 2024, which ProLongVid follows; `upsample_long`): each
pattern of `patterns` is a source (e.g. one SlimPajama subset); within a source, documents of at
least `long_bytes` bytes are drawn `factor` times as often, and the sources are mixed so that
each keeps its share of the corpus' bytes (the domain mixture of the original data).
"""
from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any, Sequence

import grain
import numpy as np

from hourjax.constants import IGNORE_INDEX
from hourjax.data.batch import Meta, PackedBatch


def _expand(patterns: Sequence[str]) -> list[str]:
  paths = []
  for p in patterns:
    found = sorted(glob.glob(p))
    if not found:
      raise FileNotFoundError(f"text documents {p!r}: no such file")
    paths += found
  return paths


class Documents(grain.sources.RandomAccessDataSource):
  """Random access to documents across JSONL and ArrayRecord files (a JSONL file is indexed by
  line offsets once, at start-up; blank lines are skipped)."""

  def __init__(self, patterns: Sequence[str], field: str = "text"):
    self.patterns, self.field = list(patterns), field
    self.paths: list[str] = []
    self._files: list[tuple[str, Any]] = []      # (path, line offsets | ArrayRecord source)
    self._sizes: list[np.ndarray] = []           # bytes per document, by file
    counts, sources = [], []
    for pattern_index, pattern in enumerate(self.patterns):
      for path in _expand([pattern]):
        self.paths.append(path)
        if path.endswith(".jsonl") or path.endswith(".json"):
          offsets, sizes, at = [], [], 0
          with open(path, "rb") as f:
            for line in f:
              if line.strip():
                offsets.append(at)
                sizes.append(len(line))
              at += len(line)
          self._files.append((path, np.asarray(offsets, np.int64)))
          self._sizes.append(np.asarray(sizes, np.int64))
        elif ".array_record" in os.path.basename(path):
          source = grain.sources.ArrayRecordDataSource([path])
          self._files.append((path, source))
          self._sizes.append(np.zeros(len(source), np.int64) - 1)       # read when asked (`sizes`)
        else:
          raise ValueError(f"text documents {path!r}: expected .jsonl or .array_record files")
        counts.append(len(self._sizes[-1]))
        sources.append(np.full(counts[-1], pattern_index))
    self._ends = np.cumsum(counts)
    self.source = np.concatenate(sources) if sources else np.zeros(0, np.int64)   # pattern of each document
    if not len(self):
      raise ValueError(f"text documents {list(patterns)}: no documents")

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int) -> str:
    f = int(np.searchsorted(self._ends, index, side="right"))
    i = index - (int(self._ends[f - 1]) if f else 0)
    path, where = self._files[f]
    if isinstance(where, np.ndarray):
      with open(path, "rb") as fh:
        fh.seek(int(where[i]))
        raw = fh.readline()
    else:
      raw = where[i]
    if raw[:1] != b"{":
      return raw.decode("utf-8")
    try:
      return json.loads(raw)[self.field]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{path} document {i}: expected JSON with a {self.field!r} field ({e})") from None

  def sizes(self) -> np.ndarray:
    """Bytes of every document (ArrayRecord records are read once for it)."""
    for (path, where), size in zip(self._files, self._sizes):
      if len(size) and size[0] < 0:
        size[:] = [len(where[i]) for i in range(len(size))]
    return np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int64)

  def __getstate__(self):     # worker processes reopen ArrayRecord files
    return {"patterns": self.patterns, "field": self.field}

  def __setstate__(self, state):
    self.__init__(state["patterns"], state["field"])


class Subset(grain.sources.RandomAccessDataSource):
  """Documents at the given indices (repeats allowed)."""

  def __init__(self, documents: Documents, indices: np.ndarray):
    self.documents, self.indices = documents, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> str:
    return self.documents[int(self.indices[index])]


def upsampled(documents: Documents, indices: np.ndarray, long_bytes: int, factor: int
              ) -> tuple[list[np.ndarray], list[float]]:
  """Per source: its documents among `indices` with the long ones repeated `factor` times, and
  its mixing weight (documents drawn per step) that keeps its original share of bytes."""
  sizes = documents.sizes()[indices]
  sources = documents.source[indices]
  lists, weights = [], []
  for s in np.unique(sources):
    mine, size = indices[sources == s], sizes[sources == s]
    repeats = np.where(size >= long_bytes, factor, 1)
    lists.append(np.repeat(mine, repeats))
    # bytes per drawn document after upsampling; the source's share of draws keeps its bytes' share
    weights.append(float(size.sum()) / float((size * repeats).sum() / repeats.sum()))
  return lists, weights


class Tokenize(grain.transforms.Map):
  def __init__(self, tokenizer: str):
    self.path, self._tok = tokenizer, None

  def __getstate__(self):
    return {"path": self.path}

  def __setstate__(self, state):
    self.path, self._tok = state["path"], None

  def map(self, document: str) -> dict:
    if self._tok is None:
      from hourjax.data.chat import load_tokenizer
      self._tok = load_tokenizer(self.path)
    ids = self._tok.encode(document) + [self._tok.end_of_text]
    return {"tokens": np.asarray(ids, np.int32)}


PACKING = ("documents", "continuous")


def training_example(packed: dict, packing: str = "documents") -> dict:
  """ConcatThenSplit's {tokens, tokens_segment_ids} -> the decoder batch format (one row)."""
  tokens = packed["tokens"].astype(np.int32)
  segments = packed["tokens_segment_ids"].astype(np.int32)
  if packing == "continuous":      # EasyContext: one segment, positions continue over documents
    segments = np.where(segments > 0, 1, 0).astype(np.int32)
  index = np.arange(len(tokens))
  starts = np.r_[True, segments[1:] != segments[:-1]]
  positions = index - np.maximum.accumulate(np.where(starts, index, 0))
  labels = np.where(starts | (segments == 0), IGNORE_INDEX, tokens)
  return {"input_ids": tokens, "labels": labels.astype(np.int32),
          "positions": np.where(segments == 0, 0, positions).astype(np.int32), "segment_ids": segments}


def document_stream(patterns: Sequence[str], *, seed: int, epochs: int = 0, field: str = "text",
                    process_index: int = 0, process_count: int = 1, long_bytes: int = 0,
                    factor: int = 1) -> grain.MapDataset:
  """This process's documents (strings) in training order: its share, shuffled, repeated
  (epochs=0: forever), with per-source length upsampling when `factor` > 1."""
  source = Documents(patterns, field)
  if len(source) < process_count:
    raise ValueError(f"{len(source)} documents cannot be shared by {process_count} processes")
  mine = np.arange(len(source))[process_index::process_count]
  if factor <= 1 or long_bytes <= 0:
    return grain.MapDataset.source(Subset(source, mine)).shuffle(seed=seed).repeat(epochs or None)
  lists, weights = upsampled(source, mine, long_bytes, factor)
  parts = [grain.MapDataset.source(Subset(source, idx)).shuffle(seed=seed + i).repeat(None)
           for i, idx in enumerate(lists)]
  mixed = grain.MapDataset.mix(parts, weights)
  # an epoch: as many draws as the upsampled corpus has documents
  return mixed[:sum(map(len, lists)) * epochs] if epochs else mixed


def dataset(patterns: Sequence[str], tokenizer: str, *, seq_len: int, batch_size: int, seed: int,
            epochs: int = 0, field: str = "text", process_index: int = 0, process_count: int = 1,
            threads: int = 2, read_ahead: int = 0, packing: str = "documents", long_bytes: int = 0,
            factor: int = 1) -> grain.IterDataset:
  """This process's (PackedBatch, Meta) pairs ([batch_size, seq_len] int32 arrays) of its share of the documents.
  epochs=0 repeats forever (a step count ends the run)."""
  if seq_len < 2:
    raise ValueError(f"seq_len={seq_len}: a packed sequence needs at least 2 tokens")
  if packing not in PACKING:
    raise ValueError(f"packing={packing!r}: expected one of {PACKING}")
  docs = document_stream(patterns, seed=seed, epochs=epochs, field=field, process_index=process_index,
                         process_count=process_count, long_bytes=long_bytes, factor=factor)
  tokens = docs.map(Tokenize(tokenizer)).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=read_ahead or 4 * batch_size))
  packed = grain.experimental.ConcatThenSplitIterDataset(tokens, length_struct={"tokens": seq_len})
  return packed.map(functools.partial(training_example, packing=packing)).batch(
      batch_size, drop_remainder=True).map(as_batch)


def as_batch(arrays: dict) -> tuple[PackedBatch, Meta]:
  return PackedBatch(**arrays), Meta("packed")


def from_config(data: Any, *, process_index: int = 0, process_count: int = 1,
                seq_len: int | None = None, seed: int | None = None) -> grain.IterDataset:
  """`cfg.data` of a decoder-only run (configs/prolongvid.py:*,stage=context_extension)."""
  if data.batch_size % process_count:
    raise ValueError(f"data.batch_size={data.batch_size} is not divisible by {process_count} processes")
  upsample = dict(data.get("upsample_long", {}))
  return dataset(list(data.documents), data.tokenizer, seq_len=seq_len or data.seq_len,
                 batch_size=data.batch_size // process_count, seed=data.seed if seed is None else seed,
                 epochs=data.epochs, field=data.field, process_index=process_index,
                 process_count=process_count, threads=data.threads, read_ahead=data.read_ahead,
                 packing=data.get("packing", "documents"), long_bytes=upsample.get("long_bytes", 0),
                 factor=upsample.get("factor", 1))
