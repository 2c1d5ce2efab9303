"""The ahead-of-time command compiles the real training step with libtpu's compiler for a TPU
topology on this CPU host and reports memory that accounts for the sharded state."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from hourjax.config import model_config
from hourjax.convert.layout import with_scan
from hourjax.models import build
from hourjax.ops import context_parallel as cp
from hourjax.ops.ring_attention import ring_attention
from hourjax.train import hlo_cost
from launch import aot_compile
from conftest import tiny_model

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_tiny_stage3_step_compiles_for_v5e(tmp_path):
  out = tmp_path / "report.json"
  aot_compile.main(["--config", f"{CONFIGS}/hour_llava.py:tiny,stage=3", "--topology", "v5e:2x2",
                    "--mesh", "data=2,fsdp=2", "--batch", "4", "--frames", "32", "--retained", "8",
                    "--text", "64", "--json", str(out)])
  r = json.loads(out.read_text())
  assert r["chips"] == 4 and r["fits"] and r["scan_layers"]
  cfg = with_scan(tiny_model(), True)
  n = build.count_params(build.abstract_params("hour_llava", cfg))
  trainable = n - build.count_params(build.abstract_params("hour_llava", cfg)["vision"])
  # f32 params + two Adam moments of the trainable ones, sharded 2 ways by fsdp (at most).
  state_bytes = 4 * n + 8 * trainable
  assert r["per_device_gib"]["arguments"] * 2**30 >= state_bytes / 2 * 0.95
  assert r["per_device_gib"]["aliased"] > 0          # the state is donated
  assert r["compiled_tflops_scanned_body_once"] > 0


@pytest.mark.parametrize("config", ["prolongvid.py:tiny,stage=image_sft", "hour_llava.py:tiny,stage=1"])
def test_anyres_image_stage_compiles_for_v5e(tmp_path, config):
  """An image stage on a multi-crop anyres image per sample, at the crop bucket's static widths.
  ProLongVid: SigLIP trained, the LLM reads every token of the layout. Hour-LLaVA's stage 1:
  MemAug alone, the layout is its memory and the LLM reads the decayed queries (query width)."""
  from hourjax.config import load
  from hourjax.data.anyres import token_width
  from hourjax.data.batching import crop_edge
  from hourjax.models.anyres import crop_count, select_grid
  from hourjax.train.flops import qwen2_forward
  out = tmp_path / "image.json"
  aot_compile.main(["--config", f"{CONFIGS}/{config}", "--topology", "v5e:2x2", "--mesh", "data=1,fsdp=4",
                    "--batch", "4", "--image", "330x250", "--text", "64", "--json", str(out)])
  r = json.loads(out.read_text())
  cfg = model_config(load(f"{CONFIGS}/{config}").model)
  crops = crop_count(select_grid(330, 250, cfg.vision.image_size))
  tokens = token_width(crop_edge(crops), cfg.vision.patches_per_side)
  assert crops > 2 and r["fits"]
  lr, analytic = r["optimizer"], r["analytic_tflops_per_step"]
  if config.startswith("prolongvid"):
    assert lr["vision"] > 0 and lr["memaug"] == 0 and analytic["vision"] > 0
    visual = tokens
  else:
    assert lr["memaug"] > 0 and lr["llm"] == 0 and analytic["memaug"] > 0
    visual = cfg.query_width(crop_edge(crops), tokens)
    assert visual < tokens / 2
  llm = 3 * qwen2_forward(cfg.llm, 4, 64 - 1 + visual, head_tokens=64) / 1e12
  assert abs(analytic["llm"] / llm - 1) < 1e-9


def test_context_extension_stage_compiles_from_its_config(tmp_path):
  """The exact stage config (decoder only, theta 1e9, its optimizer and sequence length) with
  ring attention over a 4-chip 'sequence' axis."""
  out = tmp_path / "ctx.json"
  aot_compile.main(["--config", f"{CONFIGS}/prolongvid.py:tiny,stage=context_extension", "--topology", "v5e:2x2",
                    "--mesh", "data=1,fsdp=1,tensor=1,sequence=4", "--set", "model.llm.attention=ring",
                    "--json", str(out)])
  r = json.loads(out.read_text())
  assert r["fits"] and r["context"] == 512 and r["batch"] == 4 and r["mesh"]["sequence"] == 4
  assert r["optimizer"]["llm"] > 0 and r["optimizer"]["memaug"] == 0
  from configs.prolongvid import get_config as plv
  llm = with_scan(model_config(plv("tiny,stage=context_extension").model), True).llm
  assert llm.rope_theta == 1e9
  n = build.count_params(build.abstract_params("qwen2", llm))
  # f32 params + 2 Adam moments, split at most 4 ways (weights also shard over 'sequence': ZeRO-3).
  assert r["per_device_gib"]["arguments"] * 2**30 >= 12 * n / 4 * 0.95


def _tpu_collectives(attention, p=4, b=2, t=256, n=4, kv=2, d=128):
  """Collective bytes per device of d sum(attention(q, k, v)) / d(q, k, v), compiled by libtpu
  for a v5e:2x2 slice with the sequence over its 4 chips (bfloat16), and the bytes of one
  device's k block and of its segment ids."""
  mesh = jax.sharding.Mesh(np.array(aot_compile.tpu_devices("v5e:2x2")).reshape(p), ("sequence",))
  seq = lambda *shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(
      shape, dtype, sharding=jax.sharding.NamedSharding(mesh, P(None, "sequence")))
  ids = seq(b, t, dtype=jnp.int32)

  def loss(q, k, v, seg, slots):
    return jnp.sum(attention(q, k, v, seg, seg, slots, slots, causal=True, mesh=mesh,
                             batch_axes=(), head_axis=None))
  hlo = jax.jit(jax.grad(loss, (0, 1, 2))).lower(seq(b, t, n, d), seq(b, t, kv, d), seq(b, t, kv, d),
                                                 ids, ids).compile().as_text()
  return hlo_cost.collective_bytes(hlo), b * t // p * kv * d * 2, b * t // p * 4


def test_collective_bytes_of_a_ring_on_tpu_are_the_rings_own_count():
  """Forward: P-1 hops of (k, v, segments, slots); backward: P-1 hops of the same and P hops of
  the dK, dV accumulators, float32 (twice a bfloat16 block) except the last, which the
  compiler sends after the cast to bfloat16; nothing else moves."""
  got, kv_block, id_block = _tpu_collectives(ring_attention)
  p = 4
  want = 2 * (p - 1) * (2 * kv_block + 2 * id_block) + (p - 1) * 2 * (2 * kv_block) + 2 * kv_block
  assert got["collective-permute"] == want, (got, want)
  assert got["all-gather"] == got["all-to-all"] == 0 and got["loops"].count(p - 1) >= 2


def test_collective_bytes_of_the_kv_all_gather_on_tpu():
  """Forward: each device receives the other P-1 blocks of k, v, segments and slots; backward:
  dK and dV summed over the devices, as a reduce-scatter or (the TPU compiler's choice at this
  size) an all-reduce, which moves twice the bytes."""
  got, kv_block, id_block = _tpu_collectives(cp.allgather_attention)
  p = 4
  assert got["all-gather"] == (p - 1) * (2 * kv_block + 2 * id_block), got
  assert got["reduce-scatter"] + got["all-reduce"] / 2 == (p - 1) * 2 * kv_block, got
  assert got["collective-permute"] == got["all-to-all"] == 0, got


def test_hlo_trip_counts_and_group_sizes():
  hlo = """HloModule m

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %c = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]{0}) parameter(0)
  %x = f32[8]{0} get-tuple-element(%p.1), index=1
  %cp = f32[8]{0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1},{1,0}}
  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %cp)
}

ENTRY %main (a: f32[8]) -> f32[32] {
  %a = f32[8]{0} parameter(0)
  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body
  %g = f32[32]{0} all-gather(%a), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}
  %r = bf16[16]{0} all-reduce(%h), channel_id=3, replica_groups=mesh['x'=2,'y'=4] {'x'}, to_apply=%add
  ROOT %o = f32[32]{0} copy(%g)
}
"""
  got = hlo_cost.collective_bytes(hlo)
  assert got["loops"] == [5]
  assert got["collective-permute"] == 5 * 32            # 5 trips of 8 floats
  assert got["all-gather"] == 128 * 3 / 4               # groups of 4
  assert got["all-reduce"] == 2 * 32 * 1 / 2            # groups of 2 (mesh axis x)


def test_trip_counts_follow_the_counters_start_and_step_and_matmuls_count_real_taps():
  # The TPU compiler unrolls loops by two (the counter steps by 2 to the same bound) and writes
  # dots as convolutions whose windows are mostly padding: both must be read, not guessed.
  hlo = """HloModule m

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(9)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (q: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %q = (s32[], f32[8,16]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %two = s32[] constant(2)
  %next = s32[] add(%j, %two)
  %x = f32[8,16]{1,0} get-tuple-element(%q), index=1
  %w = f32[16,16]{1,0} constant({...})
  %d = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %cp = f32[8,16]{1,0} collective-permute(%d), channel_id=1, source_target_pairs={{0,1},{1,0}}
  ROOT %t = (s32[], f32[8,16]{1,0}) tuple(%next, %cp)
}

ENTRY %main (a: f32[8,16], h: bf16[64,1,32], k: bf16[4,32,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %one = s32[] constant(1)
  %init = (s32[], f32[8,16]{1,0}) tuple(%one, %a)
  %w = (s32[], f32[8,16]{1,0}) while(%init), condition=%cond, body=%body
  %h = bf16[64,1,32]{2,1,0} parameter(1)
  %k = bf16[4,32,16]{2,1,0} parameter(2)
  %c = bf16[64,4,16]{2,1,0} convolution(%h, %k), window={size=4 pad=3_3 rhs_reversal=1}, dim_labels=b0f_0io->b0f
  ROOT %o = f32[8,16]{1,0} get-tuple-element(%w), index=1
}
"""
  got = hlo_cost.collective_bytes(hlo)
  assert got["loops"] == [4]                               # i = 1, 3, 5, 7
  assert got["collective-permute"] == 4 * 8 * 16 * 4
  flops = hlo_cost.matmul_flops(hlo)
  assert flops["dot"] == 4 * 2 * 8 * 16 * 16
  # One real input position padded by 3 on each side under a window of 4: each of the 4 output
  # positions meets it at exactly one kernel tap, so a head axis costs nothing extra.
  assert flops["convolution"] == 2 * 64 * 4 * 16 * 32
  module = hlo_cost.parse(hlo)                             # read once, counted twice: the same numbers
  assert hlo_cost.collective_bytes(module) == got and hlo_cost.matmul_flops(module) == flops


@pytest.mark.parametrize("remat", [False, True])
def test_matmul_flops_of_a_tpu_compiled_step_are_the_analytic_count(remat):
  """A scanned stack of MLP layers, its gradient compiled by libtpu for 8 v5p chips with the
  weights and the batch sharded over all of them: the compiler writes the dots as convolutions
  and the weight all-gathers as collective-matmul loops unrolled by two. Its matmuls are 3x
  the forward's, 4x under full remat, exactly."""
  layers, batch, width, hidden = 2, 8 * 1024, 1024, 4096
  mesh = jax.sharding.Mesh(np.array(aot_compile.tpu_devices("v5p:2x2x2")).reshape(8), ("fsdp",))
  spec = lambda shape, *axes: jax.ShapeDtypeStruct(shape, jnp.bfloat16,
                                                   sharding=jax.sharding.NamedSharding(mesh, P(*axes)))

  def layer(x, w):
    return jnp.tanh(jnp.tanh(x @ w[0]) @ w[1].T), None

  def loss(w, x):
    y, _ = jax.lax.scan(jax.checkpoint(layer) if remat else layer, x, w)
    return jnp.sum(y.astype(jnp.float32) ** 2)
  hlo = jax.jit(jax.grad(loss)).lower(spec((layers, 2, width, hidden), None, None, None, "fsdp"),
                                      spec((batch, width), "fsdp")).compile().as_text()
  assert "windowed_dot_general" in hlo                       # the loops this test is about
  forward = layers * 2 * 2 * batch * width * hidden
  assert hlo_cost.matmul_flops(hlo)["total"] * 8 == (4 if remat else 3) * forward
