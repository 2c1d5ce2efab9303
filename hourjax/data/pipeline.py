"""The training input pipeline: a Grain dataset of static-shape batches, one stream per batch.

    ds = pipeline.from_config(run.data, model_cfg, process_index=jax.process_index(),
                              process_count=jax.process_count())
    it = iter(ds)
    batch, meta = next(it)     # a typed batch of numpy arrays (this process's share), and its Meta
    state = it.get_state()     # checkpoint it; it.set_state(state) resumes exactly
    # the trainer puts it on the mesh: hourjax.train.feed.to_global(batch, mesh, spec)

Per stream (`sources.STREAMS`): records -> per-epoch shuffle (seeded) -> this process's slice ->
`ReadSample` (decode, tokenize; a video longer than the largest frame bucket subsampled to it
or skipped, `data.read.too_long`) -> `SkipAndBatch` (bad samples, and samples that cannot be
batched, skipped and counted; batches padded to their bucket). Streams are mixed batch by batch
in proportion to their sizes (the same sequence on every process), and `workers` processes
decode in parallel with prefetch. A finite run (`epochs`) ends with one `(None, meta)`: the last
skips and the incomplete last batches it drops (`meta.dropped`), so that nothing goes unreported.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import grain

from hourjax.data import batching, chat
from hourjax.data.batch import Meta
from hourjax.data.samples import ReadOptions, ReadSample
from hourjax.data.sources import Source, epoch_records


class _SkipAndBatchIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, batch_size: int, collate: Callable, stream: str,
               max_consecutive_bad: int):
    super().__init__(parent)
    self._batch_size, self._collate, self._stream = batch_size, collate, stream
    self._max_bad = max_consecutive_bad
    self._reported = False

  def __next__(self) -> dict:
    good, skipped, run = [], [], 0
    while len(good) < self._batch_size:
      try:
        sample = next(self._parent)
      except StopIteration:          # the end of a finite stream: report what the last batch held
        if (good or skipped) and not self._reported:
          self._reported = True
          logging.warning("stream %r ended: dropped the incomplete last batch %s and skipped %s",
                          self._stream, [s["id"] for s in good], skipped)
          return None, Meta(self._stream, skipped=skipped, dropped=[s["id"] for s in good])
        raise
      if "skipped" not in sample:
        try:            # a sample that cannot be batched (shapes, buckets) is skipped here, not a crash
          self._collate.check(sample)
        except ValueError as e:
          sample = {"id": sample["id"], "skipped": str(e)}
      if "skipped" in sample:
        skipped.append((sample["id"], sample["skipped"]))
        run += 1
        if run > self._max_bad:
          raise RuntimeError(f"stream {self._stream!r}: {run} bad samples in a row; the last: "
                             + "; ".join(f"{i}: {r}" for i, r in skipped[-3:]))
        continue
      good.append(sample)
      run = 0
    meta = Meta(self._stream, [s["id"] for s in good], skipped, [s["id"] for s in good if s["truncated"]],
                [s["id"] for s in good if s.get("subsampled")])
    return self._collate(good), meta

  # Batches are built within one __next__, so the parent's position is the whole state.
  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class SkipAndBatch(grain.IterDataset):
  """Samples -> (batch, Meta) of `batch_size` good samples; skipped samples are reported in the
  next batch's meta (`skipped`: [(id, reason)]), never silently lost: a finite stream ends with
  one `(None, meta)` holding its last skips and the incomplete batch it drops."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, collate: Callable, stream: str,
               max_consecutive_bad: int = 1000):
    super().__init__(parent)
    self._args = (batch_size, collate, stream, max_consecutive_bad)

  def __iter__(self) -> grain.DatasetIterator:
    return _SkipAndBatchIterator(self._parent.__iter__(), *self._args)


class _MixIterator(grain.DatasetIterator):

  def __init__(self, parents: dict[str, grain.DatasetIterator], weights: dict[str, float]):
    super().__init__(list(parents.values()))
    self._streams, self._weights = parents, weights
    self._taken = {k: 0 for k in parents}
    self._done: set[str] = set()
    self._notes: list[Meta] = []

  def __next__(self) -> dict:
    while len(self._done) < len(self._streams):
      # The stream furthest behind its share goes next: the same sequence on every process.
      name = min((k for k in self._streams if k not in self._done),
                 key=lambda k: ((self._taken[k] + 1) / self._weights[k], k))
      try:
        batch, meta = next(self._streams[name])
      except StopIteration:
        self._done.add(name)
        continue
      if batch is None:     # a stream's end report rides with the next batch (one element, one step)
        self._notes.append(meta)
        continue
      self._taken[name] += 1
      return batch, self._with_notes(meta)
    if self._notes:         # the last report of all: an element without a batch
      return None, self._with_notes(Meta("end"))
    raise StopIteration

  def _with_notes(self, meta: Meta) -> Meta:
    for note in self._notes:
      meta.skipped, meta.dropped = meta.skipped + note.skipped, meta.dropped + note.dropped
    self._notes = []
    return meta

  def get_state(self) -> dict[str, Any]:
    return {"taken": dict(self._taken), "done": sorted(self._done),
            "streams": {k: it.get_state() for k, it in self._streams.items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    self._taken, self._done = dict(state["taken"]), set(state["done"])
    for k, it in self._streams.items():
      it.set_state(state["streams"][k])


class MixStreams(grain.IterDataset):
  """Batches of several streams interleaved in proportion to `weights`, until every stream is
  exhausted (Grain's own mix stops at the first)."""

  def __init__(self, streams: dict[str, grain.IterDataset], weights: dict[str, float]):
    super().__init__(list(streams.values()))
    self._names, self._weights = list(streams), weights

  def __iter__(self) -> grain.DatasetIterator:
    return _MixIterator({k: p.__iter__() for k, p in zip(self._names, self._parents)}, self._weights)


STREAM_MODALITY = {"video": "video", "features": "video", "image": "image", "text": "video"}


def stream_dataset(records: Any, read: ReadOptions, spec: Any, stream: str, *,
                   batch_size: int, buckets: batching.Buckets, seed: int, process_index: int = 0,
                   process_count: int = 1, epochs: int | None = None, threads: int = 2,
                   read_ahead: int | None = None) -> grain.IterDataset:
  """One stream's batches; `records` is a list of records or any random-access source.
  `threads` samples are read at once, at most `read_ahead` (default 2 batches) ahead: Grain's
  defaults (16 threads, 500 ahead) suit small records, not decoded videos."""
  ds = grain.MapDataset.source(records).shuffle(seed).repeat(epochs)
  if not read.max_frames:        # a sample longer than the largest bucket is capped to it, not a crash
    read = dataclasses.replace(read, max_frames=buckets.frames[-1])
  ds = ds[process_index::process_count].map(ReadSample(read))
  collate = _Collate(batching.BatchSpec.of(spec), buckets, STREAM_MODALITY[stream])
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=read_ahead or 2 * batch_size)
  return SkipAndBatch(ds.to_iter_dataset(options), batch_size, collate, stream)


@dataclasses.dataclass(frozen=True)
class _Collate:      # a picklable partial for the worker processes
  spec: batching.BatchSpec
  buckets: batching.Buckets
  modality: str

  def __call__(self, samples: Sequence[dict]) -> Any:
    return batching.collate(samples, self.spec, self.buckets, modality=self.modality)

  def check(self, sample: dict) -> None:
    batching.check_sample(sample, self.spec, self.buckets, self.modality)


def make_dataset(streams: dict[str, Any], read: ReadOptions, spec: Any, *, batch_size: int,
                 buckets: batching.Buckets, seed: int, process_index: int = 0, process_count: int = 1,
                 workers: int = 0, worker_buffer: int = 2, epochs: int | None = None, threads: int = 2,
                 read_ahead: int | None = None) -> grain.IterDataset:
  """All streams mixed in proportion to their sizes. `batch_size` is global; `spec` a
  batching.BatchSpec or the model config."""
  if batch_size % process_count:
    raise ValueError(f"global batch_size={batch_size} is not divisible by {process_count} processes")
  streams = {k: v for k, v in streams.items() if len(v)}
  if not streams:
    raise ValueError("the data mixture selected no records")
  chat.load_tokenizer(read.tokenizer)      # a tokenizer unfit for the official format fails here, not per sample
  per_stream = {name: stream_dataset(records, read, spec, name, batch_size=batch_size // process_count,
                                     buckets=buckets, seed=seed, process_index=process_index,
                                     process_count=process_count, epochs=epochs, threads=threads,
                                     read_ahead=read_ahead)
                for name, records in sorted(streams.items())}
  ds = MixStreams(per_stream, {k: len(streams[k]) for k in per_stream})
  if workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():      # Grain's workers read absl flags; a Python caller has none
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=worker_buffer))
  return ds


def from_config(data: Any, spec: Any, *, process_index: int = 0, process_count: int = 1,
                seed: int | None = None) -> grain.IterDataset:
  """The run config's `data` section (configs/hour_llava.py; epochs=0: forever) -> the pipeline. A prepared
  dataset (`data.prepared`, written by `python -m hourjax.data.prepared`) replaces the sources."""
  seed = data.seed if seed is None else seed
  read = ReadOptions(**dict(data.read))
  streams = streams_from_config(data, seed)
  return make_dataset(streams, read, spec, batch_size=data.batch_size,
                      buckets=batching.Buckets(tuple(data.buckets.frames), tuple(data.buckets.text)),
                      seed=seed, process_index=process_index, process_count=process_count,
                      workers=data.workers, worker_buffer=data.worker_buffer, epochs=data.epochs or None,
                      threads=data.threads, read_ahead=data.read_ahead or None)


def streams_from_config(data: Any, seed: int) -> dict[str, Any]:
  if data.get("prepared"):
    from hourjax.data.prepared import load_prepared
    return load_prepared(data.prepared)
  return epoch_records([Source(**dict(s)) for s in data.sources], data.root, seed)


def epoch_batches(data: Any) -> int:
  """Global batches in one epoch of every stream (what `train.steps=0` trains for)."""
  return sum(len(v) // data.batch_size for v in streams_from_config(data, data.seed).values())
