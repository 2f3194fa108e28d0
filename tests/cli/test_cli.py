import json
import subprocess
import sys

from helpers import TAGGING_LABELS, tagging_task, write_task
from xtremedistil.cli import main


def test_teacher_command_prints_per_language_and_reuses(tiny_models, tmp_path, capsys):
    task = tagging_task(tmp_path / "task")
    args = ["teacher", "--task", str(task), "--model_dir", str(tmp_path / "out"), "--do_NER",
            "--pt_teacher_checkpoint", str(tiny_models("bert")), "--seq_len", "16",
            "--ft_epochs", "1", "--ft_batch_size", "2", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fine-tuned" in out
    for lang in ("ar", "en", "ru"):
        assert f"  {lang}: f1" in out
    assert "macro f1 over 3 languages" in out
    saved = json.loads((tmp_path / "out" / "teacher" / "metrics.json").read_text())
    assert set(saved["test"]["per_language"]) == {"ar", "en", "ru"}
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out


def test_bad_task_folder_exits_2_without_traceback_or_outputs(tmp_path):
    task = write_task(tmp_path / "task", ["john lives\tB-PER O O"], labels=TAGGING_LABELS)
    out_dir = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "xtremedistil", "teacher", "--task", str(task), "--model_dir", str(out_dir),
         "--do_NER", "--pt_teacher_checkpoint", "unused"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"{task / 'train.tsv'}:1: 3 tags for 2 tokens" in run.stderr
    assert not out_dir.exists()


def test_bad_teacher_checkpoint_is_one_line(tiny_models, tmp_path, capsys):
    task = tagging_task(tmp_path / "task")
    code = main(["teacher", "--task", str(task), "--model_dir", str(tmp_path / "out"), "--do_NER",
                 "--pt_teacher_checkpoint", str(tmp_path / "missing"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtremedistil teacher: error: cannot load") and "\n" not in err
