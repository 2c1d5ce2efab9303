"""ProLongVid's semantic segmentation (hourjax/annotate/segments.py): the paper's similarity
against a float64 loop over its formula, and scene boundaries recovered from a real mp4 (three
scenes, libx264) through SigLIP's image and text towers (random weights) and per-frame captions
as a captioner would give them."""
import numpy as np
import jax

from hourjax.annotate import segments
from hourjax.data import video
from hourjax.models import build
from hourjax.models.siglip import SiglipConfig, SiglipTextConfig

SIZE = 112
SCENES = ((0, 30, (200, 30, 30), "square", "a red room with a white square moving right"),
          (30, 55, (30, 30, 200), "circle", "a blue room with a white ball rolling"),
          (55, 90, (30, 160, 30), "stripes", "a green field with light stripes"))


def _frames(fps):
  out = []
  for start, end, colour, shape, _ in SCENES:
    for i in range((end - start) * fps):
      f = np.zeros((SIZE, SIZE, 3), np.uint8)
      f[:] = colour
      x = 10 + (i // fps * 3) % 60
      if shape == "square":
        f[40:60, x:x + 20] = 255
      elif shape == "circle":
        yy, xx = np.mgrid[:SIZE, :SIZE]
        f[(yy - 50) ** 2 + (xx - x - 10) ** 2 < 100] = 255
      else:
        f[::8] = 255 - np.asarray(colour)
      out.append(f)
  return np.stack(out)


def test_similarity_is_the_papers_formula():
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
  fi = image / np.linalg.norm(image, axis=1, keepdims=True)
  fc = text / np.linalg.norm(text, axis=1, keepdims=True)
  n = len(fi)
  want = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      s_ij = (fi[i] @ fi[j] + fi[i] @ fc[j]) / 2 + (2 - np.exp(abs((i - j) / n)))
      s_ji = (fi[j] @ fi[i] + fi[j] @ fc[i]) / 2 + (2 - np.exp(abs((j - i) / n)))
      want[i, j] = (s_ij + s_ji) / 2
  np.testing.assert_allclose(segments.similarity(image, text), want, rtol=1e-12, atol=1e-12)
  assert segments.segment(image, text, np.arange(7), duration=59.0) == [(0.0, 59.0)]   # under a minute


def test_scene_boundaries_of_a_real_video_within_two_seconds(tmp_path, qwen2_tokenizer):
  from hourjax.data.chat import load_tokenizer
  path = str(tmp_path / "scenes.mp4")
  video.write_video(path, _frames(2), fps=2, codec="libx264")
  frames, duration = video.read_official_frames(path, SIZE)            # 1 FPS
  times = np.arange(len(frames)) + 0.5
  captions = [next(c for s, e, *_, c in SCENES if s <= t < e) for t in times]
  tok = load_tokenizer(qwen2_tokenizer)
  ids = np.zeros((len(captions), 16), np.int32)                        # padded to the tower's length
  for i, c in enumerate(captions):
    e = tok.encode(c)[:16]
    ids[i, :len(e)] = e
  vision = SiglipConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, image_size=SIZE,
                        patch_size=14, use_head=True)
  text = SiglipTextConfig(vocab_size=152000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          max_positions=16, projection_size=64)
  image = jax.jit(lambda p, x: build.build("siglip", vision).apply({"params": p}, x)["pooler_output"])(
      build.init_params("siglip", vision, jax.random.key(0)), video.to_siglip(frames))
  words = jax.jit(lambda p, x: build.build("siglip_text", text).apply({"params": p}, x)["pooler_output"])(
      build.init_params("siglip_text", text, jax.random.key(1)), ids)
  found = segments.segment(np.asarray(image), np.asarray(words), times, duration)
  assert len(found) == len(SCENES) and found[0][0] == 0 and found[-1][1] == duration
  for (start, end), (s, e, *_) in zip(found, SCENES):
    assert abs(start - s) <= 2 and abs(end - e) <= 2, found
