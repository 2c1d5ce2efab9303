"""Collective traffic and matmul FLOPs of a compiled program, read from its HLO text with loop
trip counts applied.

XLA's `cost_analysis()` counts a loop body once and reports no communication at all, so a
scanned 28-layer step with a ring inside each layer would be charged one layer and no ring.
This module walks the compiled module's call graph instead: every computation gets the number
of times it runs (a `while` body its trip count, from the start, step and bound of the counter
its condition compares: the TPU compiler unrolls collective-matmul loops by two; fusions,
calls and conditional branches their caller's count, branches as if each ran: an upper bound).
`matmul_flops` counts its dots and convolutions; `collective_bytes` every collective's bytes
per device; `executed` what each instruction the runtime runs is (matmul, data movement, ...)
and its matmul FLOPs, to read a profile by. They take the HLO text or, to read a large module
once for several, `parse(hlo)`:

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
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Module:
  """A parsed HLO module: computation -> its instructions as (name, type, op, rest), computation
  -> how many times it runs per run of the module, and the while loops' trip counts."""
  comps: dict[str, list]
  runs: dict[str, int]
  loops: list[int]


def parse(hlo: str | Module) -> Module:
  """The module's call graph with every computation's run count (a Module is returned as is)."""
  if isinstance(hlo, Module):
    return hlo
  comps: dict[str, list] = {}
  roots: dict[str, str] = {}
  entry, current = None, None
  for line in hlo.splitlines():
    h = _HEADER.match(line)
    if h and not line.startswith(" "):
      current = comps.setdefault(h.group(1), [])
      name = h.group(1)
      if line.startswith("ENTRY"):
        entry = h.group(1)
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      current.append(m.groups())
      if line.lstrip().startswith("ROOT "):
        roots[name] = m.group(1)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  tables: dict[str, dict] = {}

  def table(comp: str) -> dict:
    """name -> (op, rest) of a computation's instructions, built once per computation rather
    than once per while loop that reads it (the caller's table was rebuilt for every loop)."""
    if comp not in tables:
      tables[comp] = {name: (op, rest) for name, _, op, rest in comps.get(comp, [])}
    return tables[comp]

  def trip_count(cond: str, body: str, init: str, caller: str) -> int:
    """Iterations of `i = init; while i < N: ...; i += step`: N from the condition's compare,
    step from the body's update of the same tuple element (XLA's loop unrolling makes it 2),
    init from the caller's tuple (0 when not a constant). Without a recognisable counter, the
    largest constant in the condition."""
    instrs = table(cond)
    consts = {name: c for name in instrs for c in [_constant(instrs, name)] if c is not None}
    for op, rest in instrs.values():
      direction = re.search(r"direction=(LT|GT)", rest) if op == "compare" else None
      names = _operand_names(rest)
      if not direction or len(names) != 2:
        continue
      counter, bound = names if direction.group(1) == "LT" else names[::-1]
      gte = re.search(r"index=(\d+)", instrs.get(counter, ("", ""))[1])
      if bound not in consts or instrs.get(counter, ("",))[0] != "get-tuple-element" or not gte:
        break
      k = int(gte.group(1))
      start = _element_constant(table(caller), init, k, 0)
      return max(0, -(-(consts[bound] - start) // _step(table(body), roots.get(body, ""), k)))
    return max(consts.values()) if consts else 1

  callers = collections.defaultdict(list)          # callee -> [(caller, factor)]
  loops = []
  for name, instrs in comps.items():
    for _, _, op, rest in instrs:
      refs = dict(_CALLEE.findall(rest))
      if op == "while":
        n = trip_count(refs.get("condition", ""), refs["body"], (_operand_names(rest) or [""])[0], name)
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

  return Module(comps, {name: runs(name) for name in comps}, loops)


def _args(rest: str) -> str:
  """An instruction's operand text: `rest` (what follows `op(`) up to its closing parenthesis."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += (ch == "(") - (ch == ")")
    if depth == 0:
      return rest[:i]
  return rest


def _operand_names(rest: str) -> list[str]:
  return re.findall(r"%([\w.\-]+)", _args(rest))


def _constant(table: dict, name: str) -> int | None:
  op, rest = table.get(name, ("", ""))
  c = re.match(r"(-?\d+)\)", rest) if op == "constant" else None
  return int(c.group(1)) if c else None


def _element_constant(table: dict, tuple_name: str, k: int, default: int) -> int:
  """The value of element k of the tuple instruction `tuple_name` (in `table`, name -> (op,
  rest)) when it is an integer constant, else default."""
  op, rest = table.get(tuple_name, ("", ""))
  names = _operand_names(rest) if op == "tuple" else []
  value = _constant(table, names[k]) if k < len(names) else None
  return default if value is None else value


def _step(table: dict, root: str, k: int) -> int:
  """How much a while body (`table`, name -> (op, rest)) adds to element k of its tuple (its
  ROOT tuple's element k is add(get-tuple-element(param, k), constant)), else 1."""
  op, rest = table.get(root, ("", ""))
  names = _operand_names(rest) if op == "tuple" else []
  op, rest = table.get(names[k], ("", "")) if k < len(names) else ("", "")
  steps = [c for c in (_constant(table, n) for n in _operand_names(rest)) if c] if op == "add" else []
  return max(1, steps[0]) if steps else 1


def _dims(type_text: str) -> list[int]:
  """The dimensions of an HLO array type (its first array, for a tuple)."""
  m = _SHAPE.search(type_text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def _operand_types(rest: str, types: dict[str, str]) -> list[str]:
  """The operand types of an instruction: written inline (`f32[8,16]{1,0} %a, ...`, as XLA:CPU
  prints compiled modules) or looked up by name in its computation (the TPU compiler's form)."""
  inline = [m.group(0) for m in _SHAPE.finditer(_args(rest))]
  return inline or [types.get(n, "") for n in _operand_names(rest)]


def _window(rest: str) -> dict[str, list[list[int]]]:
  """A convolution's window attributes per spatial dimension: size, stride, pad (lo, hi),
  lhs_dilate, rhs_dilate (absent ones at their defaults)."""
  m = re.search(r"window=\{([^}]*)\}", rest)
  attrs = dict(item.split("=", 1) for item in m.group(1).split()) if m else {}
  size = [int(x) for x in attrs["size"].split("x")] if "size" in attrs else []
  def each(key, default):
    return [[int(v) for v in x.split("_")] for x in attrs[key].split("x")] if key in attrs else [default] * len(size)
  return {"size": size, "stride": [x[0] for x in each("stride", [1])], "pad": each("pad", [0, 0]),
          "lhs_dilate": [x[0] for x in each("lhs_dilate", [1])], "rhs_dilate": [x[0] for x in each("rhs_dilate", [1])]}


def _taps(inp: int, k: int, out: int, stride: int, lo: int, lhs_dilate: int, rhs_dilate: int) -> int:
  """(output position, kernel position) pairs of one spatial dimension that read a real input
  element, not padding or a hole of lhs dilation."""
  last = (inp - 1) * lhs_dilate
  n = 0
  for j in range(k):
    shift = j * rhs_dilate - lo                      # input index of output 0
    if lhs_dilate == 1:
      first, end = max(0, -(-(-shift) // stride)), min(out - 1, (last - shift) // stride)
      n += max(0, end - first + 1)
    else:
      n += sum(1 for o in range(out) if 0 <= o * stride + shift <= last and (o * stride + shift) % lhs_dilate == 0)
  return n


def _matmul_flops(op: str, type_text: str, operands: list[str], rest: str) -> float:
  """2 x multiply-adds of one dot or convolution, from its result and operand shapes."""
  out = _dims(type_text)
  if op == "dot":
    lhs = _dims(operands[0]) if operands else []
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    contracted = [lhs[int(i)] for i in m.group(1).split(",") if i] if m and lhs else []
    return 2.0 * math.prod(out) * math.prod(contracted)
  # A convolution: per (batch, output feature), input features per group x the taps that land
  # on real input. The TPU compiler writes dots as convolutions whose windows are mostly
  # padding (a head axis as a spatial dimension padded by its size - 1), so window size x
  # output positions would overcount them many times over.
  lhs, kernel = (_dims(operands[0]), _dims(operands[1])) if len(operands) > 1 else ([], [])
  labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
  if not lhs or not kernel or not labels:
    return 0.0
  lhs_l, ker_l, out_l = labels.groups()
  w = _window(rest)
  macs = out[out_l.index("b")] * kernel[ker_l.index("o")] * kernel[ker_l.index("i")]
  for d in range(len(w["size"])):
    c = str(d)
    macs *= _taps(lhs[lhs_l.index(c)], kernel[ker_l.index(c)], out[out_l.index(c)], w["stride"][d],
                  w["pad"][d][0], w["lhs_dilate"][d], w["rhs_dilate"][d])
  return 2.0 * macs


def matmul_flops(hlo: str | Module) -> dict:
  """FLOPs per run of the module of its dots and convolutions (the TPU compiler writes dots as
  convolutions), with loop trip counts applied: {"dot", "convolution", "total"}. Matmuls inside
  custom calls (Pallas kernels) are not visible here, and every branch of a conditional counts
  as if it ran: an upper bound where branches skip work (the ring's zig-zag steps run one of a
  full, two half and an empty block: counted as two full blocks per step)."""
  module = parse(hlo)
  comps, runs = module.comps, module.runs
  out = {"dot": 0.0, "convolution": 0.0}
  for name, instrs in comps.items():
    if not runs[name]:
      continue
    types = {n: t for n, t, _, _ in instrs}
    for _, type_text, op, rest in instrs:
      if op in out:
        out[op] += runs[name] * _matmul_flops(op, type_text, _operand_types(rest, types), rest)
  out["total"] = out["dot"] + out["convolution"]
  return out


def collective_bytes(hlo: str | Module, largest: int = 0) -> dict:
  """{kind: bytes per device per run of the module} for every collective kind, plus "total",
  "loops" (the while loops' trip counts, for the record) and, with `largest`, the biggest
  contributors as (bytes, kind, group size, runs, the op's JAX source name)."""
  module = parse(hlo)
  comps, loops = module.comps, module.loops
  runs = module.runs.__getitem__
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


# What moves or views data without arithmetic: a fusion of only these is a copy or transpose.
_MOVES = frozenset({"parameter", "constant", "bitcast", "reshape", "copy", "transpose", "slice", "dynamic-slice",
                    "dynamic-update-slice", "concatenate", "pad", "broadcast", "reverse", "tuple",
                    "get-tuple-element", "iota", "copy-start", "copy-done"})
_CONTROL = frozenset({"while", "conditional", "call"})


@dataclasses.dataclass(frozen=True)
class Executed:
  """One instruction the runtime executes (a fusion counts as one): its kind ("matmul",
  "data movement", "collective", "control" or "elementwise/reduction"), the matmul FLOPs of
  one execution (dots and convolutions, inside its fusion too) and its JAX source name."""
  kind: str
  flops: float
  source: str


def executed(hlo: str | Module) -> dict[str, Executed]:
  """Instruction name -> Executed, for every instruction outside fused computations (names are
  unique in an HLO module, and a profiler trace names its events by them)."""
  module = parse(hlo)
  comps = module.comps
  fused = {_callee(rest) for instrs in comps.values() for _, _, op, rest in instrs if op == "fusion"}
  memo: dict[str, tuple[float, bool]] = {}

  def cost(type_text: str, op: str, rest: str, types: dict[str, str]) -> tuple[float, bool]:
    """(matmul FLOPs, moves data only) of one execution of an instruction (a fusion: its body)."""
    if op in ("dot", "convolution"):
      return _matmul_flops(op, type_text, _operand_types(rest, types), rest), False
    if op != "fusion":
      return 0.0, op in _MOVES
    comp = _callee(rest)
    if comp not in memo:
      instrs = comps.get(comp, [])
      types = {n: t for n, t, _, _ in instrs}
      parts = [cost(t, o, r, types) for _, t, o, r in instrs]
      memo[comp] = sum(f for f, _ in parts), all(m for _, m in parts)
    return memo[comp]

  out = {}
  for comp, instrs in comps.items():
    if comp in fused:
      continue
    types = {n: t for n, t, _, _ in instrs}
    for name, type_text, op, rest in instrs:
      flops, moves = cost(type_text, op, rest, types)
      kind = ("matmul" if flops else "collective" if _kind(op) or op.endswith("-done") and _kind(op[:-5])
              else "control" if op in _CONTROL else "data movement" if moves else "elementwise/reduction")
      src = re.search(r'op_name="([^"]*)"', rest)
      out[name] = Executed(kind, flops, src.group(1) if src else "")
  return out


def _callee(rest: str) -> str:
  """The computation a fusion instruction calls."""
  return dict(_CALLEE.findall(rest)).get("calls", "")
