"""ProLongVid's semantic segmentation (paper §3.2): a video's sampled frames grouped into
contiguous segments by how alike the frames look and how well each frame matches the other
frames' captions, with a penalty for distance in time.

    s_ij = (f_i^I . f_j^I + f_i^I . f_j^C) / 2 + (2 - exp(|i - j| / N))

f^I are the frames' image features and f^C their captions' text features (L2-normalised; the
paper uses Florence, hourjax SigLIP's two towers: `models.siglip.SiglipVision` with its MAP head
and `SiglipText`). The image-caption term is not symmetric; its mean with its transpose is used.
Clustering is scikit-learn's agglomerative clustering with average linkage on the distance
2 - s (0 for a frame with itself when its caption matches it perfectly; the paper does not say
how it turns similarities into distances) cut at `threshold` (the paper's δ = 0.7), restricted
to neighbouring frames (a chain connectivity), so every cluster is one stretch of time. Videos
shorter than `min_seconds` (a minute, as the paper) are one segment.

    segments = segment(image_features, caption_features, times, duration)   # [(start, end), ...]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity(image: np.ndarray, text: np.ndarray) -> np.ndarray:
  """[N, D] image and caption features (any scale) -> the paper's s [N, N], symmetrised."""
  image, text = normalise(image), normalise(text)
  n = len(image)
  cross = image @ text.T
  visual = (image @ image.T + (cross + cross.T) / 2) / 2
  gap = np.abs(np.arange(n)[:, None] - np.arange(n)[None]) / n
  return visual + 2 - np.exp(gap)


def labels(image: np.ndarray, text: np.ndarray, threshold: float = 0.7) -> np.ndarray:
  """A segment index per frame (0, 1, ... in time order)."""
  from scipy.sparse import diags
  from sklearn.cluster import AgglomerativeClustering
  n = len(image)
  if n < 2:
    return np.zeros(n, np.int64)
  distance = np.maximum(2 - similarity(image, text), 0)
  chain = diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n), dtype=np.float64)
  raw = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                connectivity=chain, distance_threshold=threshold).fit_predict(distance)
  _, first = np.unique(raw, return_index=True)            # renumber in order of appearance
  order = {c: i for i, c in enumerate(raw[np.sort(first)])}
  return np.array([order[c] for c in raw])


def segment(image: np.ndarray, text: np.ndarray, times: Sequence[float], duration: float,
            threshold: float = 0.7, min_seconds: float = 60.0) -> list[tuple[float, float]]:
  """Segments [(start, end)] in seconds covering the video: each boundary lies halfway between
  the last frame of one segment and the first of the next."""
  if duration < min_seconds:
    return [(0.0, float(duration))]
  lab = labels(image, text, threshold)
  times = np.asarray(times, np.float64)
  cuts = [(times[i - 1] + times[i]) / 2 for i in range(1, len(lab)) if lab[i] != lab[i - 1]]
  edges = [0.0] + [float(c) for c in cuts] + [float(duration)]
  return list(zip(edges[:-1], edges[1:]))
