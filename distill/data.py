"""Task folders: reading and up-front validation.

A task folder holds `train.tsv`, `dev.tsv`, `test.tsv` (`text<TAB>label`), `labels.tsv`
(one label per line) and an unlabeled transfer file (one sentence per line).

- Classification: one label per line, optionally language-prefixed (`text<TAB>en:1`).
- Tagging (NER): space-separated tokens and one BIO tag per token; a language prefix may sit
  on the first tag only or on every tag (`en:B-PER en:O`).

Every problem in the folder is collected and reported as `path:line: what is wrong`; a folder
with any problem raises `TaskDataError` before anything is trained or written. The transfer
file is validated and read as a stream, so it may be far larger than memory.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from xtremedistil.errors import XtremeDistilError

SPLITS = ("train", "dev", "test")
CLASSIFICATION = "classification"
TAGGING = "tagging"
DEFAULT_TRANSFER_FILE = "transfer.txt"
# Lines without a language prefix in a folder where other lines have one (BCP 47 "undetermined").
UNDETERMINED_LANGUAGE = "und"
MAX_PROBLEMS_SHOWN = 50


class TaskDataError(XtremeDistilError):
    """The task folder has problems; `problems` lists each as `path:line: what is wrong`."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One labeled line. For tagging, `words` are the tokens and `label` is a tuple of tags."""

    text: str
    label: str | tuple[str, ...]
    language: str | None
    line: int
    words: tuple[str, ...] | None = None


@dataclasses.dataclass
class Task:
    """A validated task folder."""

    path: Path
    kind: str
    labels: list[str]
    splits: dict[str, list[Example]]
    transfer_path: Path | None
    transfer_lines: int = 0

    @property
    def is_tagging(self) -> bool:
        return self.kind == TAGGING

    @property
    def languages(self) -> list[str]:
        found = {ex.language for split in self.splits.values() for ex in split}
        return sorted(lang for lang in found if lang is not None)

    def label_to_id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}


class _Problems:
    """Collects `path:line: message` lines."""

    def __init__(self):
        self.lines: list[str] = []

    def add(self, path: Path, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        self.lines.append(f"{where}: {message}")

    def __bool__(self):
        return bool(self.lines)

    def raise_if_any(self, folder: Path) -> None:
        if not self.lines:
            return
        shown = self.lines[:MAX_PROBLEMS_SHOWN]
        more = len(self.lines) - len(shown)
        summary = "\n".join(shown + ([f"... and {more} more"] if more else []))
        raise TaskDataError(
            f"task folder {folder} has {len(self.lines)} problem(s); fix them and rerun:\n{summary}",
            problems=self.lines,
        )


def _decoded_lines(path: Path, problems: _Problems) -> Iterator[tuple[int, str | None]]:
    """Yields (line number, text) for every line, streaming; text is None if not UTF-8."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.add(
                    path, number,
                    f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
                )
                yield number, None


def _read_labels(path: Path, problems: _Problems) -> list[str]:
    labels: list[str] = []
    for number, text in _decoded_lines(path, problems):
        if text is None:
            continue
        label = text.split("\t")[0].strip()
        if not label:
            problems.add(path, number, "empty label; labels.tsv needs one label per line")
        elif label in labels:
            problems.add(path, number, f"duplicate label '{label}'")
        else:
            labels.append(label)
    if not labels and path.exists():
        problems.add(path, None, "no labels; labels.tsv needs one label per line")
    return labels


def _split_prefix(tag: str, labelset: set[str]) -> tuple[str | None, str | None]:
    """('en', 'B-PER') for 'en:B-PER'; (None, tag) when unprefixed; (None, None) if unknown."""
    if tag in labelset:
        return None, tag
    language, sep, rest = tag.partition(":")
    if sep and language and rest in labelset:
        return language, rest
    return None, None


def _unknown_label(label: str, labels: list[str]) -> str:
    shown = " ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
    return f"label '{label}' is not in labels.tsv (known: {shown}); add it there or fix the line"


def _parse_classification(path, number, text, label, labels, labelset, problems):
    language, name = _split_prefix(label, labelset)
    if name is None:
        problems.add(path, number, _unknown_label(label, labels))
        return None
    return Example(text=text, label=name, language=language, line=number)


def _parse_tagging(path, number, text, tag_field, labels, labelset, problems):
    words = tuple(text.split())
    tags = tag_field.split()
    if len(tags) != len(words):
        problems.add(path, number, f"{len(tags)} tags for {len(words)} tokens; give one tag per token")
        return None
    parsed = [_split_prefix(tag, labelset) for tag in tags]
    bad = [tag for tag, (_, name) in zip(tags, parsed) if name is None]
    if bad:
        problems.add(path, number, _unknown_label(bad[0], labels))
        return None
    line_language = parsed[0][0]
    for position, (language, _) in enumerate(parsed[1:], start=2):
        if language is not None and language != line_language:
            problems.add(
                path, number,
                f"tag {position} has language prefix '{language}' but the first tag has "
                f"'{line_language or 'none'}'; prefix the first tag (or every tag) with one language",
            )
            return None
    return Example(
        text=" ".join(words), label=tuple(name for _, name in parsed),
        language=line_language, line=number, words=words,
    )


def _read_split(path: Path, kind: str, labels: list[str], problems: _Problems) -> list[Example]:
    labelset = set(labels)
    parse = _parse_tagging if kind == TAGGING else _parse_classification
    examples: list[Example] = []
    for number, line in _decoded_lines(path, problems):
        if line is None:
            continue
        if not line.strip():
            problems.add(path, number, "empty line; remove it")
            continue
        columns = line.split("\t")
        if len(columns) < 2:
            problems.add(path, number, "missing label column; expected 'text<TAB>label'")
            continue
        if len(columns) > 2:
            problems.add(path, number, f"{len(columns)} tab-separated columns; expected 'text<TAB>label'")
            continue
        text, label = columns[0].strip(), columns[1].strip()
        if not text:
            problems.add(path, number, "empty text")
            continue
        if not label:
            problems.add(path, number, "empty label")
            continue
        if labels:
            example = parse(path, number, text, label, labels, labelset, problems)
            if example is not None:
                examples.append(example)
    return examples


def resolve_transfer_file(task_dir: Path, transfer_file: str | None) -> Path | None:
    """As the original: a relative `transfer_file` is looked up in the task folder first."""
    if transfer_file is None:
        default = task_dir / DEFAULT_TRANSFER_FILE
        return default if default.exists() else None
    in_task = task_dir / transfer_file
    return in_task if in_task.exists() else Path(transfer_file)


def _validate_transfer(path: Path, problems: _Problems) -> int:
    count = 0
    for number, line in _decoded_lines(path, problems):
        if line is None:
            continue
        if not line.strip():
            problems.add(path, number, "empty line in the transfer file; remove it")
            continue
        count += 1
    if count == 0:
        problems.add(path, None, "the transfer file has no sentences")
    return count


def load_task(
    task_dir: str | Path,
    tagging: bool,
    transfer_file: str | None = None,
    require_transfer: bool = False,
) -> Task:
    """Reads and validates a task folder; raises `TaskDataError` listing every problem."""
    folder = Path(task_dir)
    problems = _Problems()
    if not folder.is_dir():
        raise TaskDataError(f"{folder}: task folder not found; pass --task DIR with train/dev/test.tsv and labels.tsv")
    kind = TAGGING if tagging else CLASSIFICATION
    labels_path = folder / "labels.tsv"
    if not labels_path.exists():
        problems.add(labels_path, None, "missing file; write one label per line")
        labels = []
    else:
        labels = _read_labels(labels_path, problems)

    splits: dict[str, list[Example]] = {}
    for split in SPLITS:
        path = folder / f"{split}.tsv"
        if not path.exists():
            problems.add(path, None, f"missing file; the {split} split is required")
            continue
        before = len(problems.lines)
        splits[split] = _read_split(path, kind, labels, problems)
        if not splits[split] and len(problems.lines) == before:
            problems.add(path, None, f"empty split: {split}.tsv has no examples")

    transfer_path = resolve_transfer_file(folder, transfer_file)
    transfer_lines = 0
    if transfer_path is not None and not transfer_path.exists():
        problems.add(transfer_path, None, "transfer file not found (looked in the task folder first); fix --transfer_file")
        transfer_path = None
    elif transfer_path is None and require_transfer:
        problems.add(folder / DEFAULT_TRANSFER_FILE, None, "missing file; give unlabeled sentences or pass --transfer_file")
    elif transfer_path is not None:
        transfer_lines = _validate_transfer(transfer_path, problems)

    problems.raise_if_any(folder)
    _fill_undetermined_languages(splits)
    return Task(folder, kind, labels, splits, transfer_path, transfer_lines)


def _fill_undetermined_languages(splits: dict[str, list[Example]]) -> None:
    """Where some lines carry a language, the lines that do not are grouped as 'und'."""
    if not any(ex.language for split in splits.values() for ex in split):
        return
    for name, examples in splits.items():
        splits[name] = [
            ex if ex.language else dataclasses.replace(ex, language=UNDETERMINED_LANGUAGE)
            for ex in examples
        ]


def iter_transfer(path: str | Path) -> Iterator[str]:
    """Streams the (already validated) transfer file, one stripped sentence at a time."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                yield line
