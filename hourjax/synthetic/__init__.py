"""Made-up data for tests, the CPU demo, benchmarks and studies, kept apart from the production
pipeline: random batches of a bucket shape (`batches`), QA videos whose frames answer the
questions (`videos`), the long-video multiple-choice benchmark (`long_video_mcq`) and a small
Qwen2-like tokenizer (`tokenizer`)."""
