"""VideoMarathon's construction on Apache Beam: the per-video pipeline of `videomarathon`
(`annotate_video`) as one ParDo, so a dataset of videos runs on any Beam runner, as
tensorflow-datasets runs its large builds: the DirectRunner on one machine, Dataflow, Flink or
Spark at scale (`pipeline_args` are Beam's own options).

    from hourjax.annotate import beam as vm_beam
    from hourjax.endpoint import Endpoint
    llm = Endpoint("https://api.deepseek.com/v1", "deepseek-chat", "DEEPSEEK_API_KEY", "/shared/cache/llm.jsonl")
    counts = vm_beam.run(paths, captioner, llm, vm.Options(), out="/data/vm.jsonl", root="/data/videos",
                         pipeline_args=["--runner=DirectRunner", "--direct_num_workers=2"])

Each worker builds its clients once (`DoFn.setup`) from the endpoints' descriptions, with the
API key read from the worker's environment. The request caches work as on one machine when
they lie on a filesystem every worker sees (a rerun asks nothing twice); elsewhere each worker
keeps its own. The drop counts of `annotate_video` become Beam counters (namespace
"videomarathon") and are returned. Records are written as JSONL, one file, in no set order
(each carries its `id`).
"""
from __future__ import annotations

import collections
import json
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from hourjax.annotate import videomarathon as vm
from hourjax.endpoint import Endpoint

NAMESPACE = "videomarathon"


class AnnotateVideo(beam.DoFn):
  """A video's path -> its records as JSON lines; its drop counts as counters."""

  def __init__(self, captioner: Endpoint, llm: Endpoint, opts: vm.Options, root: str):
    self.endpoints, self.opts, self.root = (captioner, llm), opts, root

  def setup(self) -> None:
    captioner, llm = self.endpoints
    self.captioner = captioner.client()
    self.llm = self.captioner if llm == captioner else llm.client()

  def process(self, path: str) -> Iterator[str]:
    records, stats = vm.annotate_video(path, self.captioner, self.llm, self.opts, self.root)
    for name, count in stats.items():
      Metrics.counter(NAMESPACE, name).inc(count)
    for r in records:
      yield json.dumps(r, ensure_ascii=False)


def run(paths: Sequence[str], captioner: Endpoint, llm: Endpoint, opts: vm.Options, *, out: str, root: str = "",
        pipeline_args: Iterable[str] = ()) -> collections.Counter:
  """Annotate `paths` on the runner `pipeline_args` choose (default: Beam's DirectRunner); write
  the records to `out` (JSONL); return the counts (`videos`, `qa` and every drop reason)."""
  pipeline = beam.Pipeline(options=PipelineOptions(list(pipeline_args)))
  _ = (pipeline
       | "videos" >> beam.Create(sorted(paths))
       | "spread" >> beam.Reshuffle()        # one video per work item, wherever the runner has room
       | "annotate" >> beam.ParDo(AnnotateVideo(captioner, llm, opts, root))
       | "write" >> beam.io.WriteToText(out, shard_name_template=""))
  result = pipeline.run()
  result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
  return collections.Counter({c.key.metric.name: c.committed for c in counters})
