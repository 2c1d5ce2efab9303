"""The flash-attn stand-in that lets `tools.bench.vs_official` run the official MemAug on a CPU
computes what flash-attn computes: exact grouped-query attention and non-interleaved partial
rotary, against a float64 reference written from flash-attn's documented semantics."""
import sys

import numpy as np

from conftest import needs_torch

torch = needs_torch()

from tools.bench.official_step import install_flash_attn_stand_in  # noqa: E402


def test_flash_attn_stand_in_is_exact_attention_and_rotary():
  install_flash_attn_stand_in()
  try:
    from flash_attn.layers.rotary import apply_rotary_emb, apply_rotary_emb_kv_
    from flash_attn.modules.mha import FlashCrossAttention
    g = torch.Generator().manual_seed(0)
    b, sq, sk, h, hkv, d, rot = 1, 7, 11, 4, 2, 16, 8
    q, kv = torch.randn(b, sq, h, d, generator=g), torch.randn(b, sk, 2, hkv, d, generator=g)
    out = FlashCrossAttention()(q, kv).numpy()
    q64, k64, v64 = (x.double().numpy() for x in (q, kv[:, :, 0], kv[:, :, 1]))
    k64, v64 = np.repeat(k64, h // hkv, 2), np.repeat(v64, h // hkv, 2)   # query head i reads kv head i // 2
    s = np.einsum("bqhd,bkhd->bhqk", q64, k64) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v64)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-6

    angle = torch.arange(sq, dtype=torch.float32)[:, None] * torch.rand(rot // 2, generator=g)[None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = q.clone()
    apply_rotary_emb(x, cos, sin, inplace=True)                     # in place, as MemAug calls it
    x64, c, sn = q.double().numpy(), cos.double().numpy()[:, None], sin.double().numpy()[:, None]
    x1, x2 = x64[..., : rot // 2], x64[..., rot // 2: rot]
    ref = np.concatenate([x1 * c - x2 * sn, x1 * sn + x2 * c, x64[..., rot:]], -1)
    assert np.linalg.norm(x.numpy() - ref) / np.linalg.norm(ref) < 1e-6
    kv_rot = apply_rotary_emb_kv_(kv[:, :sq].clone(), cos, sin)
    assert np.allclose(kv_rot[:, :, 1].numpy(), kv[:, :sq, 1].numpy())                 # values untouched
    assert np.allclose(kv_rot[:, :, 0].numpy(), apply_rotary_emb(kv[:, :sq, 0], cos, sin).numpy())
  finally:
    for name in [n for n in sys.modules if n == "flash_attn" or n.startswith("flash_attn.")]:
      del sys.modules[name]
