"""The main job: synthetic data -> training -> save/restore -> held-out evaluation -> an answer."""
import json

from launch import demo


def test_demo_trains_restores_and_answers(tmp_path, capsys):
  assert demo.main(["--workdir", str(tmp_path), "--steps", "16", "--videos", "4",
                    "mesh.fsdp=4", "mesh.sequence=2"]) == 0       # the 8 test devices
  out = json.load(open(tmp_path / "demo.json"))
  assert out["restored_equal"] and out["train"]["last_step"] == 16
  assert out["train"]["last_loss"] < out["train"]["first_loss"]
  assert out["held_out_after"]["loss"] < out["held_out_before"]["loss"]
  for split in ("held_out_before", "held_out_after"):       # 16 steps teach the format, not yet answers
    assert 0 <= out[split]["accuracy"] <= 1 and 0 <= out[split]["exact_match"] <= 1
    assert out[split]["questions"] >= 2
  assert out["question"] and isinstance(out["answer"], str)
  assert "[5/5] one held-out question" in capsys.readouterr().out
