"""Collective traffic of a compiled program, read from its HLO text with loop trip counts applied.

XLA's `cost_analysis()` counts a loop body once and reports no communication at all, so a
scanned 28-layer step with a ring inside each layer would be charged one layer and no ring.
This module walks the compiled module's call graph instead: every computation gets the number
of times it runs (a `while` body its trip count, read from the `i < N` compare of its
condition; fusions, calls and conditional branches their caller's count, branches as if each
ran: an upper bound), and every collective its bytes per device:

  all-gather           result x (n-1)/n         (ring algorithm: each device sends n-1 shards)
  reduce-scatter       operand x (n-1)/n
  all-reduce           2 x size x (n-1)/n       (reduce-scatter + all-gather); an all-reduce
                                                inside an `all-reduce-scatter` fusion (how the
                                                TPU compiler writes reduce-scatter) as one
  all-to-all           size x (n-1)/n
  collective-permute   operand                  (each device sends its block once)

n is the replica-group size (explicit groups, iota groups or the mesh-axis form). Async pairs
are counted at their `-start`.
"""
from __future__ import annotations

import collections
import math
import re

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "s4": 0.5,
          "u4": 0.5}
KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTR = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_SHAPE = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(body|condition|calls|to_apply)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _shapes_bytes(type_text: str, arrays_only: bool = False) -> list[float]:
  """Bytes of each array in an HLO type (a tuple gives one entry per element); arrays_only
  drops scalars (an async start's u32[] contexts)."""
  out = []
  for dtype, dims in _SHAPE.findall(type_text):
    if dtype in _BYTES and not (arrays_only and not dims):
      out.append(_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d))
  return out


def group_size(attrs: str) -> int:
  """Devices per replica group of a collective's attribute text."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
  if m:
    sizes = dict((k.strip("'"), int(v)) for k, v in (p.split("=") for p in m.group(1).split(",")))
    return math.prod(sizes[a.strip().strip("'")] for a in m.group(2).split(",") if a.strip())
  m = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
  if m:
    return len(m.group(1).split(","))
  return 1


def _kind(op: str) -> str | None:
  base = op[:-len("-start")] if op.endswith("-start") else op
  return base if base in KINDS else None


def collective_bytes(hlo: str, largest: int = 0) -> dict:
  """{kind: bytes per device per run of the module} for every collective kind, plus "total",
  "loops" (the while loops' trip counts, for the record) and, with `largest`, the biggest
  contributors as (bytes, kind, group size, runs, the op's JAX source name)."""
  comps: dict[str, list] = {}
  entry, current = None, None
  for line in hlo.splitlines():
    h = _HEADER.match(line)
    if h and not line.startswith(" "):
      current = comps.setdefault(h.group(1), [])
      if line.startswith("ENTRY"):
        entry = h.group(1)
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      current.append(m.groups())
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")

  def trip_count(cond: str) -> int:
    consts = [int(c) for _, _, op, rest in comps.get(cond, []) if op == "constant"
              for c in re.findall(r"^(\d+)\)", rest)]
    return max(consts) if consts else 1

  callers = collections.defaultdict(list)          # callee -> [(caller, factor)]
  loops = []
  for name, instrs in comps.items():
    for _, _, op, rest in instrs:
      refs = dict(_CALLEE.findall(rest))
      if op == "while":
        n = trip_count(refs.get("condition", ""))
        loops.append(n)
        callers[refs["body"]].append((name, n))
        continue
      for key in ("calls", "to_apply"):
        if key in refs:
          callers[refs[key]].append((name, 1))
      b = _BRANCHES.search(rest)
      if b:
        for c in b.group(1).split(","):
          callers[c.strip().lstrip("%")].append((name, 1))

  memo: dict[str, int] = {entry: 1}

  def runs(name: str) -> int:
    if name not in memo:
      memo[name] = 0                                # cycles cannot occur in HLO; guard anyway
      memo[name] = sum(runs(c) * f for c, f in callers.get(name, []))
    return memo[name]

  out = dict.fromkeys(KINDS, 0.0)
  parts = []
  for name, instrs in comps.items():
    times = runs(name)
    if not times:
      continue
    for _, type_text, op, rest in instrs:
      kind = _kind(op)
      if kind is None:
        continue
      sizes = _shapes_bytes(type_text, arrays_only=op.endswith("-start"))
      if op.endswith("-start") and kind != "all-reduce":
        # (operands..., results..., contexts): the results of a gather, the operands otherwise
        half = len(sizes) // 2
        sizes = sizes[half:] if kind == "all-gather" else sizes[:half]
      size = sum(sizes)
      n = group_size(rest)
      if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
        kind = "reduce-scatter"
      if kind == "collective-permute":
        moved = size
      elif kind == "all-reduce":
        moved = 2 * size * (n - 1) / n
      elif kind == "reduce-scatter" and not name.startswith("all-reduce-scatter"):
        moved = size * n * (n - 1) / n              # the result is the scattered shard
      else:
        moved = size * (n - 1) / n
      out[kind] += times * moved
      if largest:
        src = re.search(r'op_name="([^"]*)"', rest)
        parts.append((times * moved, kind, n, times, src.group(1) if src else name))
  out["total"] = sum(out[k] for k in KINDS)
  out["loops"] = sorted(loops)
  if largest:
    out["largest"] = sorted(parts, reverse=True)[:largest]
  return out
