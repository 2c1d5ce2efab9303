"""op_profile: a profiler trace read per executed instruction, joined with the compiled HLO."""
import jax
import jax.numpy as jnp
import pytest

from hourjax.train import hlo_cost, op_profile

N = 384


def test_split_wall_divides_each_instant_among_the_spans_running_then():
  # a [0, 10) and b [5, 15) overlap for 5 ns; a loop [0, 20) waits on both and owns only [15, 20)
  share, busy = op_profile.split_wall([(0, 10, "a"), (5, 15, "b"), (0, 20, "loop")], frozenset({"loop"}))
  assert busy == pytest.approx(20e-9)
  assert share == pytest.approx({"a": 7.5e-9, "b": 7.5e-9, "loop": 5e-9})
  assert sum(share.values()) == pytest.approx(busy)
  # a gap is idle: not busy, nobody's share
  share, busy = op_profile.split_wall([(0, 4, "a"), (10, 12, "a")])
  assert busy == pytest.approx(6e-9) and share == pytest.approx({"a": 6e-9})


def _program():
  """A matmul in a 3-trip loop, then a transpose the result is returned in."""
  def f(x, w):
    y = jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ w), x)
    return y.T * 2.0
  x = jax.random.normal(jax.random.key(0), (N, N))
  return jax.jit(f).lower(x, x).compile(), (x, x)


def test_executed_instructions_carry_the_matmul_flops_with_loop_trips_outside():
  compiled, _ = _program()
  hlo = compiled.as_text()
  ex = hlo_cost.executed(hlo)
  matmuls = [e for e in ex.values() if e.kind == "matmul"]
  assert matmuls and all(e.flops == 2 * N ** 3 for e in matmuls)      # one execution each
  # counted with the loop's trips, the executed matmuls are the module's matmul FLOPs
  module = hlo_cost.parse(hlo)
  runs = {name: module.runs[comp] for comp, instrs in module.comps.items() for name, *_ in instrs}
  assert sum(e.flops * runs[n] for n, e in ex.items()) == hlo_cost.matmul_flops(hlo)["total"] == 3 * 2 * N ** 3
  assert any(e.kind == "control" for e in ex.values())                   # the while loop


def test_breakdown_of_a_traced_program_counts_every_matmul_run(tmp_path):
  compiled, args = _program()
  steps = 2
  wall = op_profile.traced(lambda: jax.block_until_ready(compiled(*args)), steps, str(tmp_path))
  b = op_profile.breakdown(str(tmp_path), compiled.as_text(), steps, wall)
  # every matmul of every step is in the trace: 3 loop trips a step
  assert b["by_kind"]["matmul"]["flops"] == pytest.approx(3 * 2 * N ** 3)
  assert sum(o.runs for o in b["ops"] if o.kind == "matmul") == 3
  # the shares are of the busy time, which the wall clock bounds
  assert sum(o.seconds for o in b["ops"]) == pytest.approx(b["busy_s"])
  assert 0 < b["busy_s"] <= wall * 1.01
  table = op_profile.format_table(b, top=3, peak_flops=1e11)
  assert "| matmul |" in table and "idle" in table
