"""The main job runs end to end and reports every stage of the data flow."""
from launch import demo


def test_demo_prints_the_data_flow(capsys):
  demo.main(["--seconds", "24"])
  out = capsys.readouterr().out
  # 24 frames, repeated up to the tiny preset's 16 -> 24 memory frames x (4x4 + newline) tokens
  assert "24 frames at 1 FPS" in out and "408 memory tokens" in out
  assert "6 frames -> 30 decayed queries" in out   # 24 // 4 frames x (16 // 4 tokens + newline)
  assert "logits (1, 53, 512)" in out              # 24 text tokens - placeholder + 30 visual
