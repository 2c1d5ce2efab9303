"""Scores of a benchmark run: lmms-eval's numbers (as lmms-eval 0.7.3 aggregates them, or the
papers' copy), the per-group tables, and the results file in lmms-eval's own form.

A row is one scored item: {"id", "task", "pred", "correct"} (+ "rating" for TempCompass, or
"unjudged": True), with the document's fields `groups` needs.
"""
from __future__ import annotations

import datetime
from typing import Any, Sequence

import numpy as np

from hourjax.evaluation.protocol import Protocol, generation, metric

MLVU_DEV_TASKS = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")
GROUPS = {"videomme": ("duration", "domain", "sub_category", "task_type"),
          "videomme_w_subtitle": ("duration", "domain", "sub_category", "task_type"),
          "longvideobench_val_v": ("duration_group", "question_category"), "lvbench": ("question_type",),
          "mlvu_dev": ("task_type",)}


def groups(task: str, fields: dict) -> list[list[str]]:
  """The (name, value) pairs a row is tabulated under (LVBench: each of its question types)."""
  if task.startswith("tempcompass"):
    return [["dim", fields["dim"]]]
  out = []
  for name in GROUPS.get(task, ()):
    value = fields.get(name)
    for v in (value if isinstance(value, list) else [value]):
      if v is not None:
        out.append([name, str(v)])
  return out


def value(task: str, rows: Sequence[dict], protocol: Protocol = Protocol()) -> float:
  """The task's lmms-eval number over scored rows (unjudged rows excluded)."""
  rows = [r for r in rows if not r.get("unjudged")]
  hits = [bool(r["correct"]) for r in rows]
  if task.startswith("videomme"):
    return 100 * sum(hits) / len(hits) if hits else 0
  if task == "longvideobench_val_v":
    return round(sum(hits) / len(hits), 5) if hits else 0.0
  if task == "lvbench":
    return sum(hits) / len(hits) if hits else float("nan")
  if task == "mlvu_dev":
    if protocol.paper:
      return 100 * sum(hits) / len(hits) if hits else 0
    per = {t: [bool(r["correct"]) for r in rows if r["task_type"] == t] for t in MLVU_DEV_TASKS}
    return sum(100 * sum(h) / len(h) if h else 0 for h in per.values()) / len(MLVU_DEV_TASKS)   # M-Avg
  return 100 * sum(r["rating"] == 1 for r in rows) / len(rows) if rows else 0     # TempCompass


def tempcompass_dims(rows: Sequence[dict]) -> dict[str, float]:
  """`<dim>_accuracy` for every dimension present, in the order they first appear (lmms-eval's)."""
  rows = [r for r in rows if not r.get("unjudged")]
  dims = list(dict.fromkeys(r["dim"] for r in rows))
  return {f"{d}_accuracy": 100 * sum(r["rating"] == 1 for r in rows if r["dim"] == d) /
          sum(r["dim"] == d for r in rows) for d in dims}


def tables(task: str, rows: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
  """Accuracy (percent) and count per group value, e.g. {"duration": {"long": {"accuracy", "n"}}}."""
  per: dict[tuple[str, str], list[bool]] = {}
  for r in rows:
    if not r.get("unjudged"):
      for name, v in r["groups"]:
        per.setdefault((name, v), []).append(bool(r["correct"]))
  out: dict[str, dict] = {}
  for (name, v), hits in sorted(per.items()):
    out.setdefault(name, {})[v] = {"accuracy": 100 * sum(hits) / len(hits), "n": len(hits)}
  return out


def summarise(task: str, rows: Sequence[dict], protocol: Protocol = Protocol()) -> dict[str, Any]:
  scored = [r for r in rows if not r.get("unjudged")]
  accuracy = 100 * float(np.mean([r["correct"] for r in scored])) if scored else None
  out = {"metric": metric(task, protocol), "value": value(task, rows, protocol), "n": len(scored),
         "unjudged": len(rows) - len(scored), "accuracy": accuracy, "tables": tables(task, rows)}
  if task.startswith("tempcompass"):
    out["dims"] = tempcompass_dims(rows)
  if task == "lvbench" and len(scored) > 1:     # lmms-eval's built-in mean has a standard error
    out["stderr"] = float(np.std([bool(r["correct"]) for r in scored], ddof=1) / np.sqrt(len(scored)))
  if task == "mlvu_dev":
    out["absent_tasks"] = sorted(set(MLVU_DEV_TASKS) - {r["task_type"] for r in scored})
  return out


def lmms_eval_results(summaries: dict[str, dict], protocol: Protocol, model: str, totals: dict[str, int],
                      group: str | None = None) -> dict[str, Any]:
  """The results JSON lmms-eval writes (`<date>_results.json`), for these tasks: `results` with
  `<metric>,none` and `<metric>_stderr,none` per task, `group_subtasks`, `configs`, `versions`,
  `n-shot`, `higher_is_better`, `n-samples` and `config`."""
  results, configs, higher = {}, {}, {}
  for task, s in summaries.items():
    row: dict[str, Any] = {"alias": task if group is None else f" - {task}"}
    metrics = {s["metric"]: s["value"], **s.get("dims", {})}
    for name, v in metrics.items():
      row[f"{name},none"] = v
      row[f"{name}_stderr,none"] = s.get("stderr", "N/A") if name == s["metric"] else "N/A"
    results[task] = row
    tokens, stops = generation(task, protocol)
    configs[task] = {"task": task, "output_type": "generate_until",
                     "generation_kwargs": {"max_new_tokens": tokens, "until": list(stops) or ["\n\n"],
                                           "do_sample": False, "temperature": 0}}
    higher[task] = {name: True for name in metrics}
  out = {"results": results,
         "group_subtasks": ({group: list(summaries)} if group else {}) | {t: [] for t in summaries},
         "configs": configs, "versions": {t: "Yaml" for t in summaries}, "n-shot": {t: 0 for t in summaries},
         "higher_is_better": higher,
         "n-samples": {t: {"original": totals[t], "effective": totals[t]} for t in summaries},
         "config": {"model": "hourjax", "model_args": model, "protocol": protocol.name, "setting": protocol.setting},
         "lmms_eval_version": "0.7.3" if not protocol.paper else "ProLongVid's bundled copy",
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  if group:
    out["results"] = {group: {"alias": group, " ": " "}, **results}
  return out
