"""A prepared dataset: a mixture's records (selected, weighted, grouped, media paths resolved),
written once as ArrayRecord through a tensorflow-datasets builder, one split per stream, and
read back by random access, so that no host parses the annotation JSON at start-up.

  python -m hourjax.data.prepared --config configs/hour_llava.py:tiny,stage=3 --out /data/prepared \\
      data.root=/data
  # then train with data.prepared=/data/prepared/hourjax_prepared/1.0.0

TensorFlow is not needed: the builder writes with `download_and_prepare` and reads with
`as_data_source` (not `tfds.load`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator, Sequence

import tensorflow_datasets as tfds


class HourjaxPrepared(tfds.core.GeneratorBasedBuilder):
  """Records as JSON strings; splits named after the streams."""
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, streams: dict[str, list[dict]] | None = None, **kwargs):
    self._streams = streams or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict({"record": tfds.features.Text()}))

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
    return {name: self._generate_examples(records) for name, records in self._streams.items()}

  def _generate_examples(self, records: Sequence[dict]) -> Iterator[tuple[int, dict]]:
    for i, r in enumerate(records):
      yield i, {"record": json.dumps(r)}


def write_prepared(streams: dict[str, list[dict]], out_dir: str) -> str:
  """Writes the streams' records; returns the dataset directory (what `data.prepared` takes)."""
  builder = HourjaxPrepared(streams={k: v for k, v in streams.items() if v}, data_dir=out_dir,
                            file_format="array_record")
  tfds.disable_progress_bar()
  builder.download_and_prepare()
  return builder.data_dir


class JsonRecords:
  """Random access to one split's records (picklable, for Grain's worker processes)."""

  def __init__(self, data_dir: str, split: str):
    self.data_dir, self.split = data_dir, split
    self._source = tfds.builder_from_directory(data_dir).as_data_source(split)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    return json.loads(self._source[i]["record"])

  def __getstate__(self):
    return {"data_dir": self.data_dir, "split": self.split}

  def __setstate__(self, state):
    self.__init__(state["data_dir"], state["split"])


def load_prepared(data_dir: str) -> dict[str, JsonRecords]:
  try:
    splits = tfds.builder_from_directory(data_dir).info.splits
  except Exception as e:   # TFDS raises several types for a missing or foreign folder
    raise FileNotFoundError(f"{data_dir}: not a prepared dataset ({e})") from None
  return {name: JsonRecords(data_dir, name) for name in splits}


def main(argv: Sequence[str] | None = None) -> int:
  from hourjax.config import load
  from hourjax.data.sources import Source, epoch_records
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="run config, path.py[:arg]")
  p.add_argument("--out", required=True)
  p.add_argument("overrides", nargs="*", help="config overrides: --config.key=value (or key=value)")
  from hourjax.config import split_overrides
  own, flags_ = split_overrides(sys.argv[1:] if argv is None else argv)
  a = p.parse_args(own)
  data = load(a.config, flags_ + a.overrides).data
  streams = epoch_records([Source(**dict(s)) for s in data.sources], data.root, data.seed)
  path = write_prepared(streams, a.out)
  print(f"prepared {path}: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(streams.items())))
  return 0


if __name__ == "__main__":
  from hourjax import cli
  sys.exit(cli.run(main))
