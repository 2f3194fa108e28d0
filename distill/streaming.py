"""Does memory stay flat as the transfer set grows? Scores a synthetic transfer file with a tiny
teacher and trains one stage-2 epoch on it through the real cache and `tf.data` path, for each size
in its own process, and compares peak RSS.

    python -m xtremedistil.distill.streaming --lines 200000,2000000 --out runs/streaming

The transfer file is generated from the demo task's vocabulary (seeded) into OUT and deleted after
its run unless `--keep`; nothing here downloads anything. Each size prints and records
`{lines, peak_rss_mb, score_seconds, epoch_seconds}`; the comparison is written to OUT/streaming.json.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import time
from pathlib import Path

from xtremedistil import module_command

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def demo_words() -> list[str]:
    import xtremedistil

    words, folder = set(), Path(xtremedistil.__file__).parent / "demo_task"
    for name in ("train.tsv", "transfer.txt"):
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            words.update(line.split("\t")[0].lower().split())
    return sorted(words)


def write_transfer(path: Path, lines: int, seed: int = 0) -> None:
    """`lines` sentences of 4-30 demo words, streamed to disk."""
    rng, words = random.Random(seed), demo_words()
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            handle.write(" ".join(rng.choice(words) for _ in range(rng.randint(4, 30))) + "\n")


def tiny_teacher(folder: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the demo vocabulary, saved like a hub checkpoint."""
    import tensorflow as tf
    from transformers import BertConfig, BertTokenizerFast, TFBertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + demo_words()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tf.keras.utils.set_random_seed(0)
    model = TFBertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(lines: int, out: Path, keep: bool = False, chunk_size: int = 100_000, batch_size: int = 1024) -> dict:
    """Scores `lines` synthetic sentences, then one stage-2 (top-1) epoch; returns the figures."""
    import xtremedistil  # noqa: F401
    import tensorflow as tf

    from xtremedistil.distill.memory import peak_rss_mb
    from xtremedistil.distill.cache import build_cache
    from xtremedistil.distill.data import iter_transfer
    from xtremedistil.distill.stages import StageConfig, StageData, StageRunner, schedule
    from xtremedistil.distill.students import StudentConfig, build_student, layer_groups
    from xtremedistil.distill.teacher import TeacherSpec, build_teacher
    from xtremedistil.distill.tokenization import encode_sentences, load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    transfer = out / f"transfer-{lines}.txt"
    write_transfer(transfer, lines)
    checkpoint = tiny_teacher(out / "teacher")
    tokenizer = load_tokenizer(str(checkpoint))
    teacher = build_teacher(TeacherSpec(str(checkpoint), False, ["0", "1"], 32))
    scorer = tf.function(lambda ids, mask: teacher.teacher_outputs(ids, mask, 2), reduce_retracing=True)

    def score(ids, mask):
        return {k: v.numpy() for k, v in scorer(ids, mask).items()}

    started = time.time()
    caches = {}
    for name, source, n in (("transfer", iter_transfer(transfer), lines), ("dev", iter(demo_words()[:200]), 200)):
        caches[name] = build_cache(out / f"cache-{lines}-{name}", source, score, tokenizer, seq_len=32, tagging=False,
                                   chunk_size=chunk_size, batch_size=batch_size, signature={"lines": lines, "set": name},
                                   total=n, description=f"scoring {name} ({n:,} lines)")
    score_seconds = time.time() - started
    rss_after_scoring = peak_rss_mb()

    config = StudentConfig(kind="bilstm", tagging=False, num_labels=2, seq_len=32, teacher_vocab_size=len(tokenizer),
                           vocab_size=len(tokenizer), teacher_hidden_size=32, word_emb_dim=16, bilstm_hidden_size=16)
    student = build_student(config)
    dev = encode_sentences(tokenizer, demo_words()[:200], 32, False)
    data = StageData(caches["transfer"], caches["dev"], dev, dev, [], ["0", "1"], False)
    runner = StageRunner(student, layer_groups(student, config), data, StageConfig(epochs=1, batch_size=batch_size),
                         out / f"student-{lines}",
                         evaluate=lambda: {"metric": "accuracy", "overall": {"accuracy": 0.0, "n": 0}})  # no labels
    started = time.time()
    runner.run([sub for sub in schedule(len(runner.groups)) if sub.name == "stage2-top1"])
    epoch_seconds = time.time() - started
    if not keep:
        transfer.unlink()
    return {"lines": lines, "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_scoring_mb": round(rss_after_scoring, 1),
            "score_seconds": round(score_seconds, 1), "epoch_seconds": round(epoch_seconds, 1),
            "chunks": len(caches["transfer"].chunks)}


def compare(sizes: list[int], out: Path, keep: bool = False) -> dict:
    """Each size in a fresh process (peak RSS is per process); the ratio of the largest to the smallest."""
    runs = []
    for lines in sizes:
        command = module_command("xtremedistil.distill.streaming", "--lines", str(lines), "--out", str(out), "--one",
                                 *(["--keep"] if keep else []))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"streaming run with {lines} lines failed:\n{result.stderr[-3000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    smallest, largest = min(runs, key=lambda r: r["lines"]), max(runs, key=lambda r: r["lines"])
    report = {"runs": runs, "peak_rss_ratio": round(largest["peak_rss_mb"] / smallest["peak_rss_mb"], 4),
              "command": " ".join(["python -m xtremedistil.distill.streaming", "--lines", ",".join(map(str, sizes))])}
    (out / "streaming.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xtremedistil.distill.streaming", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", default="200000,2000000", help="comma-separated transfer-set sizes (default: %(default)s)")
    parser.add_argument("--out", default="runs/streaming", help="work folder (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the generated transfer files")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # one size, in this process
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.lines.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--lines '{args.lines}': give comma-separated integers, e.g. 200000,2000000")
    if not sizes or min(sizes) < 1:
        parser.error("--lines: give at least one positive size")
    out = Path(args.out)
    if args.one:
        print(json.dumps(measure(sizes[0], out, args.keep)))
        return 0
    report = compare(sizes, out, args.keep)
    print(f"peak RSS ratio {report['peak_rss_ratio']:.3f} (largest / smallest transfer set)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
