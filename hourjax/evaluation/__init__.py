"""Benchmark evaluation as lmms-eval does it: the official release layouts (`readers`), prompts,
answer extraction and scores in the lmms-eval 0.7.3 and papers' protocols (`protocol`), and the
results (`report`)."""
