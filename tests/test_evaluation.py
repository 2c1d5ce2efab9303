"""Evaluation identical to lmms-eval 0.7.3, tested against lmms-eval's own task code (its wheel
from the package index, tests/lmms_eval_reference.py): one document per benchmark in its
official release layout, prompts byte for byte, every answer parser on 90 varied model outputs,
the TempCompass judge's requests, and every aggregation; plus the readers' errors, the judge
client over real HTTP, and launch.evaluate end to end (resume, shards, unjudged then judged)."""
import http.server
import json
import os
import random
import threading

import jax
import pytest

import lmms_eval_reference as ref
from chat_endpoint import ScriptedChat
from configs.hour_llava import get_config
from conftest import QWEN_VOCAB
from hourjax.config import model_config
from hourjax.convert.io import save_params
from hourjax.data.video import probe, write_video, moving_square
from hourjax.endpoint import ChatClient, EndpointError
from hourjax.evaluation import protocol as pr
from hourjax.evaluation import report
from hourjax.evaluation.readers import READERS, BenchmarkFormatError
from hourjax.models import build
from launch import evaluate

OPTS = ["a red square", "a blue circle", "nothing", "two squares"]
# Model outputs: letters bare, bracketed, with periods, answer phrases, sentences that start with a
# capital that is not the answer, several letters, empty, non-English, lower case, multi-line,
# reasoning blocks, long replies without a letter, yes / no and caption-matching forms.
OUTPUTS = [
    "A", "B", "C", "D", "E", "a", "b", "(A)", "(B) a blue circle", "[C]", "{D}", "A.", "B. a blue circle", "C.D.",
    "D) two squares", "B)", "Answer: B", "Answer: (C)", "answer: d", "The answer is B.", "The best answer is: C",
    "The correct answer is (D) two squares.", "Best option: (A)", "Best option:(B)", "Option C", "Choice B",
    "I choose C because B is wrong", "I think the answer is A", "My answer is D.",
    "Based on the video, the answer is D.", "A man is walking. The answer is D.", "The square is red.",
    "It is not clear from the video.", "In the video, a red square appears first, so B.", "Definitely C",
    "Clearly, A", "I'd say E", "None of the above", "All of them", "Both A and B", "A or B", "B, C",
    "B and D are both plausible but D is better.", "", "   ", "\n", "答案是 B", "选C", "正确答案：A", "정답은 D",
    "答えは B です", "Réponse : C", "La respuesta es B", "the answer is c", "option d",
    "B\nBecause the square is red.", "Reasoning: the square moves.\nAnswer: C", "A\n\nB",
    "The video shows a square.\nThe best answer is: D", "<think>maybe A</think>C", "<think>B", "</think>D",
    "<analysis>x</analysis> (B)", "I cannot tell what happens in this long video at all, sorry about that friend",
    "This is a very long reply without any option letters in it whatsoever to be seen here.", "1", "2", "Option 2",
    "yes", "Yes, he is.", "No", "no.", "Nope", "Not sure", "Caption A", "Caption B: The man is shooting",
    "Sentence A", "B. a blue circle.", "C) nothing", "(D)", "D.", "**B**", "`A`", "The correct option is B",
    "B is correct", "Correct answer: C", "A cat.", "Answer:\nD", "((C))", "B!", "D?", "Answer is A, not B.",
    " C ", "CD", "AB", "ABCD"]
assert len(OUTPUTS) >= 90


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """One small benchmark of each kind in its official release layout, with real mp4 files."""
  root = tmp_path_factory.mktemp("releases")

  def video(rel, seconds=24, fps=2):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), moving_square(seconds, fps=fps, size=32), fps=fps)
    return str(path)
  qs = [("What is shown first?", 0), ("What is never shown?", 2), ("What is shown last?", 3)]
  # Video-MME: videomme/test-00000-of-00001.parquet, data/<videoID>.mp4, subtitle/<videoID>.srt
  import pyarrow as pa
  import pyarrow.parquet as pq
  (root / "vmme" / "videomme").mkdir(parents=True)
  rows = [{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
           "url": "https://www.youtube.com/watch?v=vid1", "videoID": "vid1", "question_id": f"001-{i + 1}",
           "task_type": ["Counting Problem", "Object Recognition", "Temporal Reasoning"][i], "question": q,
           "options": [f"{'ABCD'[j]}. {o}" for j, o in enumerate(OPTS)], "answer": "ABCD"[a]}
          for i, (q, a) in enumerate(qs)]
  pq.write_table(pa.Table.from_pylist(rows), str(root / "vmme" / "videomme" / "test-00000-of-00001.parquet"))
  video("vmme/data/vid1.mp4", seconds=400, fps=1)
  cues = []
  for i in range(400):     # one-second cues; some without the white-font tag, one repeated
    text = f'<font color="white" size=".72c">line {i}</font>' if i % 7 else f"plain {i}"
    cues.append(f"{i + 1}\n00:{i // 60:02d}:{i % 60:02d},000 --> 00:{(i + 1) // 60:02d}:{(i + 1) % 60:02d},000\n{text}")
  cues.append("401\n00:00:05,000 --> 00:00:06,000\n<font color=\"white\" size=\".72c\">again</font>")
  (root / "vmme" / "subtitle").mkdir()
  (root / "vmme" / "subtitle" / "vid1.srt").write_text("\n\n".join(cues) + "\n")
  # LongVideoBench: lvb_val.json (candidates), videos/<video_path>
  video("lvb/videos/v1.mp4")
  json.dump([{"video_id": "v1", "question": q, "question_wo_referring_query": q, "candidates": OPTS[:3 + (i % 2)],
              "correct_choice": a % 3, "position": [1, 2], "topic_category": "NP-News-Programs",
              "question_category": ["TOS", "S2E", "E2O"][i], "level": "L1-Perception", "id": f"v1_{i}",
              "video_path": "v1.mp4", "subtitle_path": "v1_en.json", "duration_group": 15,
              "starting_timestamp_for_subtitles": 0.0, "duration": 24.0, "view_count": 1}
             for i, (q, a) in enumerate(qs)], open(root / "lvb" / "lvb_val.json", "w"))
  # LVBench: video_info.meta.jsonl, videos/<key>.mp4
  video("lvbench/videos/k1.mp4")
  (root / "lvbench" / "video_info.meta.jsonl").write_text(json.dumps({"key": "k1", "type": "sport", "qa": [
      {"uid": i, "question": q + "\n" + "\n".join(f"({'ABCD'[j]}) {o}" for j, o in enumerate(OPTS)),
       "answer": "ABCD"[a], "question_type": ["key information retrieval", "reasoning"][: 1 + i % 2],
       "time_reference": "00:01-00:02"} for i, (q, a) in enumerate(qs)]}) + "\n")
  # TempCompass: questions/<format>.json, videos/<video_id>.mp4
  video("tc/videos/t1.mp4")
  (root / "tc" / "questions").mkdir(parents=True)
  mc = {"t1": {"direction": [{"question": "Where does the square move?\nA. left\nB. right\nC. up",
                              "answer": "B. right"}],
               "speed": [{"question": "How fast is it?\nA. slow\nB. fast", "answer": "A. slow"}]}}
  yn = {"t1": {"direction": [{"question": "Does the square move right?", "answer": "yes"},
                             {"question": "Does the square move left?", "answer": "no"}]}}
  cm = {"t1": {"direction": [{"question": "Which caption matches the video better?\nCaption A: The square moves "
                              "right.\nCaption B: The square moves left.",
                              "answer": "Caption A: The square moves right."}]}}
  cap = {"t1": {"direction": [{"question": "Write a caption.\nInformation A: {'direction': 'right'}\n"
                                           "Generated Caption:", "answer": "B. right"}]}}
  for name, data in (("multi-choice", mc), ("yes_no", yn), ("caption_matching", cm), ("captioning", cap)):
    json.dump(data, open(root / "tc" / "questions" / f"{name}.json", "w"))
  # MLVU: json/<n>_<task>.json (with the open-ended files), video/<json stem>/<video>
  (root / "mlvu" / "json").mkdir(parents=True)
  for stem, task in (("1_plotQA", "plotQA"), ("4_count", "count")):
    video(f"mlvu/video/{stem}/m1.mp4")
    json.dump([{"video": "m1.mp4", "duration": 24.0, "question": q, "candidates": OPTS, "answer": OPTS[a],
                "question_type": task} for q, a in qs], open(root / "mlvu" / "json" / f"{stem}.json", "w"))
  json.dump([{"video": "s.mp4", "duration": 9.0, "question": "Describe it.", "answer": "A square.",
              "question_type": "subPlot", "scoring_points": ["square"]}],
            open(root / "mlvu" / "json" / "8_sub_scene.json", "w"))
  json.dump([{"video": "s.mp4", "duration": 9.0, "question": "Summarise.", "answer": "A square.",
              "question_type": "summary"}], open(root / "mlvu" / "json" / "9_summary.json", "w"))
  return root


DIRS = {"videomme": "vmme", "longvideobench": "lvb", "lvbench": "lvbench", "tempcompass": "tc", "mlvu": "mlvu"}
HF_HOME = {"videomme": "videomme", "lvbench": "lvbench", "mlvu": "mlvu"}


def _docs(release, benchmark):
  return READERS[benchmark](str(release / DIRS[benchmark]))


def _lmms_utils(release, task_dir, judge=None):
  return ref.task_utils(task_dir, str(release / "hf_home"), judge)


def test_readers_read_the_official_layouts(release):
  counts = {b: len(_docs(release, b).docs) for b in READERS}
  assert counts == {"videomme": 6, "longvideobench": 3, "lvbench": 3, "tempcompass": 6, "mlvu": 6}
  mlvu = _docs(release, "mlvu")
  assert set(mlvu.skipped) == {"sub_scene", "summary"} and "open-ended" in mlvu.skipped["summary"]
  assert all(os.path.exists(d.video) for b in READERS for d in _docs(release, b).docs)
  lvb = _docs(release, "longvideobench").docs[0].fields
  assert [lvb[f"option{i}"] for i in range(5)] == OPTS[:3] + ["N/A", "N/A"]


@pytest.mark.parametrize("setting", ["default", "llava_vid"])
def test_prompts_are_byte_identical(release, setting):
  """Every task's prompt equals lmms-eval's doc_to_text on the same document and model setting."""
  proto = pr.Protocol("lmms-eval", setting)
  model = None if setting == "default" else "llava_vid"
  vm = _lmms_utils(release, "videomme")
  for doc in _docs(release, "videomme").docs:
    if doc.task == "videomme":
      want = ref.text(vm.videomme_doc_to_text, doc.fields, ref.kwargs("videomme/videomme.yaml", model))
      assert pr.prompt(doc, proto) == want
    else:       # lmms-eval finds videos and subtitles under $HF_HOME/videomme
      hf = release / "hf_home" / "videomme"
      for sub in ("data", "subtitle"):
        if not (hf / sub).exists():
          hf.mkdir(parents=True, exist_ok=True)
          os.symlink(release / "vmme" / sub, hf / sub)
      info = probe(doc.video)
      ref.VIDEOS[str(hf / "data" / "vid1.mp4")] = (info.fps, info.frames)
      sub_kw = ref.kwargs("videomme/videomme_w_subtitle.yaml", model)
      want = ref.text(vm.videomme_doc_to_text_subtitle, doc.fields, sub_kw)
      got = pr.prompt(doc, proto, (info.fps, info.frames))
      assert got == want and got.startswith(pr.SUBTITLE_HEADER + "line ")
      lines = got[len(pr.SUBTITLE_HEADER):].split("\nSelect")[0].split("\n")
      assert lines != sorted(lines, key=lambda x: int(x.split()[-1]) if x.split()[-1].isdigit() else -1)  # set order
      no_srt = type(doc)(doc.task, doc.id, doc.video, {**doc.fields, "videoID": "none"}, "/nowhere.srt")
      assert pr.prompt(no_srt, proto, (info.fps, info.frames)) == ref.text(
          vm.videomme_doc_to_text_subtitle, no_srt.fields, ref.kwargs("videomme/videomme_w_subtitle.yaml", model))
  lvb = _lmms_utils(release, "longvideobench")
  for doc in _docs(release, "longvideobench").docs:
    assert pr.prompt(doc, proto) == ref.text(lvb.longvideobench_doc_to_text, doc.fields,
                                             ref.kwargs("longvideobench/longvideobench_val_v.yaml", model))
  lb = _lmms_utils(release, "lvbench")
  for doc in _docs(release, "lvbench").docs:
    want = ref.text(lb.lvbench_doc_to_text, doc.fields, ref.kwargs("lvbench/lvbench.yaml", model))
    assert pr.prompt(doc, proto) == want
  tc = _lmms_utils(release, "tempcompass")
  yaml = {"tempcompass_multi_choice": "tempcompass_mc", "tempcompass_yes_no": "tempcompass_yes_no",
          "tempcompass_caption_matching": "tempcompass_caption_matching",
          "tempcompass_captioning": "tempcompass_captioning"}
  fn = {"tempcompass_multi_choice": "multi_choice", "tempcompass_yes_no": "yes_no",
        "tempcompass_caption_matching": "caption_matching", "tempcompass_captioning": "captioning"}
  for doc in _docs(release, "tempcompass").docs:
    want = ref.text(getattr(tc, f"tempcompass_doc_to_text_{fn[doc.task]}"), doc.fields,
                    ref.kwargs(f"tempcompass/{yaml[doc.task]}.yaml", model))
    assert pr.prompt(doc, proto) == want
  ml = _lmms_utils(release, "mlvu")
  for doc in _docs(release, "mlvu").docs:
    assert pr.prompt(doc, proto) == ref.text(ml.mlvu_doc_to_text, doc.fields, ref.kwargs("mlvu/mlvu_dev.yaml", model))
  assert pr.generation("videomme") == (16, ("\n\n",)) and pr.generation("longvideobench_val_v")[0] == 32


def test_answer_extraction_equals_lmms_eval(release):
  """Each parser on every output, through lmms-eval's own process_results (after its reasoning-tag
  stripping and .strip()): the same letter and the same verdict."""
  vm, lb, ml = (_lmms_utils(release, d) for d in ("videomme", "lvbench", "mlvu"))
  lvb = _lmms_utils(release, "longvideobench")
  docs = {b: _docs(release, b).docs for b in READERS}
  checked = 0
  for out in OUTPUTS:
    ours = pr.clean(out)
    for doc in docs["videomme"][:2] + docs["lvbench"][:2] + docs["mlvu"][:2]:
      mod, fn, key = {"videomme": (vm, "videomme_process_results", "videomme_perception_score"),
                      "videomme_w_subtitle": (vm, "videomme_process_results", "videomme_perception_score"),
                      "lvbench": (lb, "lvbench_process_results", "lvbench_score"),
                      "mlvu_dev": (ml, "mlvu_process_results", "mlvu_percetion_score")}[doc.task]
      theirs = ref.process(getattr(mod, fn), doc.fields, out)[key]
      got = pr.score(doc, ours)
      if doc.task == "lvbench":
        assert got["correct"] == bool(theirs), (out, doc.task)
        assert got["pred"] == vm.extract_characters_regex(ref.sys.modules["lmms_eval.api.reasoning"]
                                                          .strip_reasoning_tags(out, ref.REASONING_TAGS).strip())
      else:
        assert (got["pred"], got["correct"]) == (theirs["pred_answer"], theirs["pred_answer"] == theirs["answer"]), out
      checked += 1
    for doc in docs["longvideobench"]:
      random.seed(0)
      theirs = ref.process(lvb.longvideobench_process_results, doc.fields, out)["lvb_acc"]
      got = pr.score(doc, ours, rng=random.Random(0))
      letters = [chr(65 + i) for i in range(5) if doc.fields[f"option{i}"] != "N/A"]
      if any(c in "ABCDE" for c in ref.sys.modules["lmms_eval.api.reasoning"].strip_reasoning_tags(
          out, ref.REASONING_TAGS).strip().replace("The answer", "").replace("The best answer is", "")):
        assert got["pred"] == theirs["parsed_pred"], out
      else:           # lmms-eval draws from the global RNG here; both draw among the options
        assert got["pred"] in letters and theirs["parsed_pred"] in letters
      checked += 1
  assert checked >= 80 * 9


def test_tempcompass_rules_and_judge_requests_equal_lmms_eval(release):
  """Rule-scored answers get lmms-eval's rating; the others reach the judge with lmms-eval's exact
  request, and the judge's reply is read the same way. Without a judge they are unjudged."""
  def reply(prompt):
    if "Video Description" in prompt:
      return "Reasoning: it moves right.\nAnswer: B. right" if "right" in prompt.split("Video Description:")[1] else (
          "Answer: None of the choices are correct")
    return "Correct" if "right" in prompt.split("Model Prediction:")[1] else "Incorrect, sorry"
  seen_theirs, seen_ours = [], []
  tc = _lmms_utils(release, "tempcompass", judge=lambda p: seen_theirs.append(p) or reply(p))
  offline = _lmms_utils(release, "tempcompass")
  fn = {"tempcompass_multi_choice": "multi_choice", "tempcompass_yes_no": "yes_no",
        "tempcompass_caption_matching": "caption_matching", "tempcompass_captioning": "captioning"}
  outputs = OUTPUTS + ["B. right", "B) right", "right", "It moves right.", "Caption A: The square moves right.",
                       "The square moves right.", "(A) The square moves right.", "Yes", "no, it does not"]
  judged = 0
  for doc in _docs(release, "tempcompass").docs:
    for out in outputs:
      theirs = ref.process(getattr(tc, f"tempcompass_process_results_{fn[doc.task]}"), doc.fields, out)["avg_accuracy"]
      got = pr.score(doc, pr.clean(out), judge=lambda p: seen_ours.append(p) or reply(p))
      assert got["rating"] == theirs["rating"], (doc.task, out)
      assert seen_ours == seen_theirs, (doc.task, out)
      judged += got["judged"]
      alone = pr.score(doc, pr.clean(out))
      lmms_offline = ref.process(getattr(offline, f"tempcompass_process_results_{fn[doc.task]}"), doc.fields, out)
      assert alone.get("unjudged", False) == got["judged"]
      if not got["judged"]:
        assert alone["rating"] == lmms_offline["avg_accuracy"]["rating"]
  assert judged > 100 and len(seen_ours) == judged


def _rows(release, benchmark, outputs, proto=pr.Protocol()):
  docs = _docs(release, benchmark).docs
  rows = []
  for i, doc in enumerate(docs):
    out = outputs[i % len(outputs)]
    got = pr.score(doc, pr.clean(out), proto, rng=random.Random(0), judge=lambda p: "Correct")
    rows.append({"id": doc.id, "task": doc.task, "groups": report.groups(doc.task, doc.fields),
                 **{k: doc.fields[k] for k in ("task_type", "dim") if k in doc.fields}, **got})
  return docs, rows


def test_aggregations_equal_lmms_eval(release):
  """lmms-eval's number for each task from its own aggregation of its own per-item results."""
  vm, lvb, lb, ml = (_lmms_utils(release, d) for d in ("videomme", "longvideobench", "lvbench", "mlvu"))
  tc = _lmms_utils(release, "tempcompass", judge=lambda p: "Correct")
  for outputs in (["A", "B", "C"], ["B", "B", "D"], ["The answer is A", "C", "no idea"]):
    docs, rows = _rows(release, "videomme", outputs)
    for task in ("videomme", "videomme_w_subtitle"):
      items = [ref.process(vm.videomme_process_results, d.fields, outputs[i % 3])["videomme_perception_score"]
               for i, d in enumerate(docs) if d.task == task]
      assert report.value(task, [r for r in rows if r["task"] == task]) == vm.videomme_aggregate_results(items)
    docs, rows = _rows(release, "longvideobench", outputs)
    items = [ref.process(lvb.longvideobench_process_results, d.fields, outputs[i % 3])["lvb_acc"]
             for i, d in enumerate(docs)]
    if "no idea" not in outputs:
      assert report.value("longvideobench_val_v", rows) == lvb.longvideobench_aggregate_results(items)
    docs, rows = _rows(release, "lvbench", outputs)
    items = [ref.process(lb.lvbench_process_results, d.fields, outputs[i % 3])["lvbench_score"]
             for i, d in enumerate(docs)]
    assert report.value("lvbench", rows) == sum(items) / len(items)
    docs, rows = _rows(release, "mlvu", outputs)
    items = [ref.process(ml.mlvu_process_results, d.fields, outputs[i % 3])["mlvu_percetion_score"]
             for i, d in enumerate(docs)]
    assert report.value("mlvu_dev", rows) == pytest.approx(ml.mlvu_aggregate_results_dev(items), abs=1e-12)
    assert report.summarise("mlvu_dev", rows)["absent_tasks"] == ["anomaly_reco", "ego", "needle", "order",
                                                                   "topic_reasoning"]
  fn = {"tempcompass_multi_choice": "multi_choice", "tempcompass_yes_no": "yes_no",
        "tempcompass_caption_matching": "caption_matching", "tempcompass_captioning": "captioning"}
  outputs = ["B", "yes", "maybe", "Caption B"]
  docs, rows = _rows(release, "tempcompass", outputs)
  for task in fn:
    mine = [r for r in rows if r["task"] == task]
    theirs = [ref.process(getattr(tc, f"tempcompass_process_results_{fn[task]}"), d.fields, outputs[i % 4])
              for i, d in enumerate(docs) if d.task == task]
    assert report.value(task, mine) == tc.tempcompass_aggregate_rating([t["avg_accuracy"] for t in theirs], None)
    for dim, v in report.tempcompass_dims(mine).items():
      assert v == tc.tempcompass_aggregate_rating([t[dim] for t in theirs if dim in t], None)


def test_paper_protocol():
  """The papers' copy: Video-MME ends "The best answer is:" and reads the first A-D after its
  answer phrases (a long reply naming none gives ""); MLVU's older prompt and overall accuracy."""
  from hourjax.evaluation.readers import Doc
  doc = Doc("videomme", "1", "", {"question": "Q?", "options": ["A. x", "B. y"], "answer": "B"})
  paper = pr.Protocol("paper")
  assert pr.prompt(doc, paper).endswith("B. y\nThe best answer is:") and paper.setting == "llava_vid"
  assert [pr.score(doc, o, paper)["pred"] for o in ("Answer: B", "The best answer is B", "I think this is a tough one "
          "where every single option looks wrong to me", "b")] == ["A", "B", "", ""]
  assert pr.score(doc, "Answer: B")["pred"] == "B"       # lmms-eval 0.7.3 ranks "B" after the colon
  mlvu = Doc("mlvu_dev", "1", "", {"question": "Question: Q?\nOptions:\n(A) x\n(B) y", "answer": "B",
                                   "task_type": "count"})
  assert pr.prompt(mlvu, paper) == "\nQuestion: Q?\nOptions:\n(A) x\n(B) y\nOnly give the best option.\n"
  rows = [{"task_type": "count", "correct": True}, {"task_type": "count", "correct": False}]
  assert report.value("mlvu_dev", rows, paper) == 50.0 and report.value("mlvu_dev", rows) == 50.0 / 7
  assert pr.clean("<think>A</think> B", paper) == "<think>A</think> B" and pr.generation("videomme", paper)[1] == ()


def test_malformed_annotations_name_the_file_and_record(tmp_path):
  (tmp_path / "json").mkdir()
  json.dump([{"video": "a.mp4", "question": "Q", "candidates": ["x", "y"], "answer": "x"},
             {"video": "b.mp4", "candidates": ["x"], "answer": "x"}], open(tmp_path / "json" / "4_count.json", "w"))
  with pytest.raises(BenchmarkFormatError, match=r"4_count\.json: record 1 has no 'question' field"):
    READERS["mlvu"](str(tmp_path))
  (tmp_path / "lvb_val.json").write_text('[{"id": "x", "question": "Q"')
  with pytest.raises(BenchmarkFormatError, match=r"lvb_val\.json: not JSON"):
    READERS["longvideobench"](str(tmp_path))
  bad = [{"id": "x", "question": "Q", "correct_choice": "2", "duration_group": 15, "question_category": "T",
          "video_path": "v"}]
  (tmp_path / "lvb_val.json").write_text(json.dumps(bad))
  with pytest.raises(BenchmarkFormatError, match=r"record 0: 'correct_choice' is a str, expected int"):
    READERS["longvideobench"](str(tmp_path))
  with pytest.raises(FileNotFoundError, match="Video-MME annotations"):
    READERS["videomme"](str(tmp_path))


class _Judge(ScriptedChat):
  """An OpenAI-compatible chat-completions endpoint on localhost: fails the first request of
  every new prompt with a 503, then answers by a fixed rule."""
  seen: list = []
  usage = {"prompt_tokens": 3, "completion_tokens": 1}

  def do_POST(self):
    body = self.request_body()
    prompt = body["messages"][-1]["content"]
    _Judge.seen.append((body["model"], prompt))
    if sum(p == prompt for _, p in _Judge.seen) == 1:
      self.send_response(503)
      self.end_headers()
      return
    self.send_chat("garbage" if "garbage" in prompt else
                   ("Correct" if "right" in prompt.split("Model Prediction:")[-1] else "Incorrect"))


@pytest.fixture(scope="module")
def judge_url():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{server.server_address[1]}/v1"
  server.shutdown()


def test_judge_client_retries_caches_and_re_asks(judge_url, tmp_path):
  cache = str(tmp_path / "cache.jsonl")
  client = ChatClient(judge_url, "judge-model", "key", cache=cache, backoff=0.01)
  ask = lambda text, **kw: client.complete([{"role": "user", "content": text}], max_tokens=4, **kw)
  assert ask("Model Prediction: right") == "Correct" and client.stats["retries"] == 1      # 503, then the answer
  assert ask("Model Prediction: left") == "Incorrect"
  again = ChatClient(judge_url, "judge-model", cache=cache)
  n = len(_Judge.seen)
  assert again.complete([{"role": "user", "content": "Model Prediction: right"}], max_tokens=4) == "Correct"
  assert len(_Judge.seen) == n and again.stats["cached"] == 1                                # asked nothing
  def valid(reply):
    if reply not in ("Correct", "Incorrect"):
      raise ValueError(reply)
  with pytest.raises(EndpointError, match="no valid answer in 2 attempts"):
    ask("garbage", validate=valid, attempts=2)
  assert client.stats["invalid"] == 2 and "garbage" not in open(cache).read()               # never cached
  with pytest.raises(EndpointError, match="unreachable"):
    ChatClient("http://127.0.0.1:9/v1", "m", retries=1, backoff=0.01, timeout=2).complete([{"role": "user",
                                                                                            "content": "x"}])


def test_evaluate_end_to_end(release, tmp_path, capsys, qwen2_tokenizer, judge_url):
  """launch.evaluate with the real Qwen2 vocabulary: shards, resume, both results files; TempCompass
  answers the rules cannot read are unjudged without a judge and judged on a rerun with one,
  with no generation repeated."""
  run = get_config("tiny")
  run.model.llm.vocab_size = QWEN_VOCAB
  cfg = model_config(run.model)
  ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
  save_params(ckpt, build.init_params("hour_llava", cfg, jax.random.key(0)), "hour_llava", cfg)
  args = ["--params", ckpt, "--tokenizer", qwen2_tokenizer, "--root", str(release / "lvb"), "--out", out,
          "--benchmark", "longvideobench", "--min-frames", "16", "--chunk", "8", "--max-new-tokens", "3"]
  assert evaluate.main(args + ["--process-index", "1", "--process-count", "2"]) == 0
  assert not os.path.exists(os.path.join(out, "longvideobench.json"))       # share 0 not done
  assert evaluate.main(args + ["--process-index", "0", "--process-count", "2"]) == 0
  result = json.load(open(os.path.join(out, "longvideobench.json")))
  s = result["tasks"]["longvideobench_val_v"]
  assert s["n"] == 3 and set(s["tables"]["question_category"]) == {"TOS", "S2E", "E2O"}
  lmms = json.load(open(os.path.join(out, "longvideobench.lmms_eval.json")))
  assert lmms["results"]["longvideobench_val_v"]["lvb_acc,none"] == s["value"]
  assert lmms["n-samples"]["longvideobench_val_v"] == {"original": 3, "effective": 3}
  capsys.readouterr()
  assert evaluate.main(args + ["--process-index", "0", "--process-count", "2"]) == 0   # nothing left to do
  assert "2 already scored" in capsys.readouterr().out

  tc = ["--params", ckpt, "--tokenizer", qwen2_tokenizer, "--root", str(release / "tc"), "--out", out,
        "--benchmark", "tempcompass", "--min-frames", "16", "--chunk", "8", "--max-new-tokens", "3"]
  assert evaluate.main(tc) == 0
  rows = [json.loads(line) for line in open(os.path.join(out, "tempcompass.0.jsonl"))]
  unjudged = [r for r in rows if r.get("unjudged")]
  assert any(r["task"] == "tempcompass_captioning" for r in unjudged)     # captioning is always judged
  first = json.load(open(os.path.join(out, "tempcompass.json")))
  assert sum(t["unjudged"] for t in first["tasks"].values()) == len(unjudged)
  assert evaluate.main(tc + ["--judge-url", judge_url, "--judge-model", "gpt-3.5-turbo-1106"]) == 0
  again = [json.loads(line) for line in open(os.path.join(out, "tempcompass.0.jsonl"))]
  assert [r["response"] for r in again] == [r["response"] for r in rows]     # nothing generated again
  assert not any(r.get("unjudged") for r in again) and sum(r.get("judged", False) for r in again) == len(unjudged)
  final = json.load(open(os.path.join(out, "tempcompass.json")))
  assert all(t["unjudged"] == 0 for t in final["tasks"].values())
  lmms = json.load(open(os.path.join(out, "tempcompass.lmms_eval.json")))
  assert lmms["group_subtasks"]["tempcompass"] == evaluate.TEMPCOMPASS_TASKS
  assert "avg_accuracy,none" in lmms["results"]["tempcompass_captioning"]
  # An unreadable video: its questions are recorded as skipped, counted in the report, not scored.
  import shutil
  broken = tmp_path / "lvbench_broken"
  shutil.copytree(release / "lvbench", broken)
  data = (broken / "videos" / "k1.mp4").read_bytes()
  (broken / "videos" / "k1.mp4").write_bytes(data[: len(data) // 3])           # cut: no index left
  lvb = ["--params", ckpt, "--tokenizer", qwen2_tokenizer, "--root", str(broken), "--out", out,
         "--benchmark", "lvbench", "--min-frames", "16", "--chunk", "8", "--max-new-tokens", "3"]
  assert evaluate.main(lvb) == 0
  summary = json.load(open(os.path.join(out, "lvbench.json")))
  assert len(summary["skipped"]) == 3 and all("k1.mp4" in why for why in summary["skipped"].values())
  # An output directory that cannot be written: one line, before anything is read.
  from hourjax import cli
  (tmp_path / "blocker").write_text("a file")
  capsys.readouterr()
  assert cli.run(evaluate.main, lvb[:-10] + ["--out", str(tmp_path / "blocker" / "out")] + lvb[-8:]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert "error: out" in err[0] and "is not writable" in err[0] and len(err) == 2
