import pytest

from helpers import CLASSIFICATION_ROWS, TAGGING_LABELS, TAGGING_ROWS, write_task
from xtremedistil.distill.data import TaskDataError, iter_transfer, load_task


def problems_of(folder, tagging=False, **kwargs):
    with pytest.raises(TaskDataError) as caught:
        load_task(folder, tagging, **kwargs)
    return caught.value.problems


def test_valid_classification_task_reads(tmp_path):
    folder = write_task(tmp_path, CLASSIFICATION_ROWS, labels=["0", "1"], transfer=["a b", "c"])
    task = load_task(folder, tagging=False)
    assert task.kind == "classification" and task.labels == ["0", "1"]
    assert [ex.label for ex in task.splits["train"][:2]] == ["1", "1"]
    assert task.languages == [] and task.transfer_lines == 2


def test_tagging_prefixes_on_first_or_every_tag(tmp_path):
    rows = ["john lives in paris\ten:B-PER O O B-LOC", "иван в москва\tru:B-PER ru:O ru:B-LOC"]
    task = load_task(write_task(tmp_path, rows, labels=TAGGING_LABELS), tagging=True)
    first, second = task.splits["train"]
    assert first.language == "en" and first.label == ("B-PER", "O", "O", "B-LOC")
    assert second.language == "ru" and second.words == ("иван", "в", "москва")
    assert task.languages == ["en", "ru"]


def test_classification_language_prefix(tmp_path):
    rows = ["good film\ten:1", "хороший фильм\tru:1", "bad film\ten:0"]
    task = load_task(write_task(tmp_path, rows, labels=["0", "1"]), tagging=False)
    assert [(ex.language, ex.label) for ex in task.splits["train"]] == [("en", "1"), ("ru", "1"), ("en", "0")]


def test_unprefixed_lines_in_a_prefixed_folder_are_undetermined(tmp_path):
    rows = ["good film\ten:1", "bad film\t0"]
    task = load_task(write_task(tmp_path, rows, labels=["0", "1"]), tagging=False)
    assert [ex.language for ex in task.splits["train"]] == ["en", "und"]


@pytest.mark.parametrize("row, tagging, expected", [
    ("john lives\tB-PER O O", True, "train.tsv:2: 3 tags for 2 tokens"),
    ("good film\t7", False, "train.tsv:2: label '7' is not in labels.tsv"),
    ("john\ten:B-FOO", True, "train.tsv:2: label 'en:B-FOO' is not in labels.tsv"),
    ("\t1", False, "train.tsv:2: empty text"),
    ("good film", False, "train.tsv:2: missing label column"),
    ("a\tb\t1", False, "train.tsv:2: 3 tab-separated columns"),
    ("john paris\ten:B-PER de:B-LOC", True, "train.tsv:2: tag 2 has language prefix 'de'"),
    ("", False, "train.tsv:2: empty line"),
])
def test_each_line_problem_is_reported_with_file_and_line(tmp_path, row, tagging, expected):
    good = "john lives\tB-PER O" if tagging else "good film\t1"
    labels = TAGGING_LABELS if tagging else ["0", "1"]
    folder = write_task(tmp_path, [good, row], dev=[good], labels=labels)
    problems = problems_of(folder, tagging)
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(folder / "train.tsv")), problems
    assert expected in problems[0], problems


def test_invalid_utf8_is_reported_with_line(tmp_path):
    folder = write_task(tmp_path, ["good film\t1"], labels=["0", "1"])
    (folder / "dev.tsv").write_bytes(b"good film\t1\nbad \xe9 film\t0\n")
    problems = problems_of(folder)
    assert problems == [f"{folder / 'dev.tsv'}:2: invalid UTF-8 (byte 0xe9 at column 5); "
                        "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"]


def test_empty_split_and_missing_files(tmp_path):
    folder = write_task(tmp_path, ["good film\t1"], labels=["0", "1"])
    (folder / "dev.tsv").write_text("")
    (folder / "test.tsv").unlink()
    (folder / "labels.tsv").unlink()
    problems = problems_of(folder)
    joined = "\n".join(problems)
    assert f"{folder / 'labels.tsv'}: missing file" in joined
    assert f"{folder / 'dev.tsv'}: empty split" in joined
    assert f"{folder / 'test.tsv'}: missing file" in joined


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    folder = write_task(tmp_path, ["good\t1", "bad\t9", "\t1", "x"], dev=["y\t2"], labels=["0", "1"])
    problems = problems_of(folder)
    assert [p.split(": ")[0].rsplit("/", 1)[1] for p in problems] == [
        "train.tsv:2", "train.tsv:3", "train.tsv:4", "dev.tsv:1", "test.tsv:1"]


def test_transfer_file_validated_and_streamed(tmp_path):
    folder = write_task(tmp_path, CLASSIFICATION_ROWS, labels=["0", "1"])
    (folder / "unlabeled.txt").write_text("one\ntwo\n\nthree\n")
    problems = problems_of(folder, transfer_file="unlabeled.txt")
    assert problems == [f"{folder / 'unlabeled.txt'}:3: empty line in the transfer file; remove it"]
    (folder / "unlabeled.txt").write_text("one\ntwo\nthree\n")
    task = load_task(folder, False, transfer_file="unlabeled.txt")
    stream = iter_transfer(task.transfer_path)
    assert next(stream) == "one"  # a generator: nothing is read ahead of need
    assert list(stream) == ["two", "three"]


def test_missing_transfer_file_when_required(tmp_path):
    folder = write_task(tmp_path, CLASSIFICATION_ROWS, labels=["0", "1"])
    assert "missing file" in problems_of(folder, require_transfer=True)[0]
    assert "transfer file not found" in problems_of(folder, transfer_file="nope.txt")[0]


def test_shared_sample_layout_reads(tmp_path):
    folder = write_task(tmp_path, TAGGING_ROWS, labels=TAGGING_LABELS)
    task = load_task(folder, tagging=True)
    assert task.languages == ["ar", "en", "ru"]
