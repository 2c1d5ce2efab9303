"""hourjax: Hour-LLaVA (VideoMarathon) and ProLongVid's long-context recipe in JAX/Flax."""
