"""`xtremedistil` command line: one subcommand per pipeline stage.

Flag names follow the original `run_xtreme_distil.py` (`--task`, `--model_dir`, `--do_NER`,
`--pt_teacher_checkpoint`, ...), so its commands keep working. Errors the user can fix are
printed as one line per problem, without a traceback, with exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import xtremedistil  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from xtremedistil.errors import XtremeDistilError

DESCRIPTION = """\
Distil a fine-tunable pre-trained language model (BERT, mBERT, XLM-R, ...) into a tiny
student with XtremeDistil's multi-stage method, export it, and measure it.

A task folder holds train.tsv, dev.tsv, test.tsv (text<TAB>label; for NER space-separated
tokens<TAB>space-separated BIO tags, optionally language-prefixed like en:B-PER), labels.tsv
and an unlabeled transfer file (transfer.txt by default)."""


def _add_task_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task")
    group.add_argument("--task", required=True, metavar="DIR",
                       help="task folder with train/dev/test.tsv and labels.tsv")
    group.add_argument("--do_NER", action="store_true",
                       help="the task is tagging (NER): one BIO tag per token; default is classification")
    group.add_argument("--transfer_file", metavar="FILE", default=None,
                       help="unlabeled sentences, one per line; looked up in --task first (default: transfer.txt)")
    group.add_argument("--seq_len", type=int, default=32,
                       help="word pieces per sentence, special tokens included (default: 32, as in the paper)")


def _add_teacher_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("teacher")
    group.add_argument("--pt_teacher_checkpoint", required=True, metavar="PATH_OR_ID",
                       help="pre-trained teacher: a local HF folder (TF or PyTorch safetensors weights) or a hub id")
    group.add_argument("--pt_teacher", default=None, metavar="CLASS",
                       help="transformers TF model class, e.g. TFBertModel or TFXLMRobertaModel (default: TFAutoModel)")
    group.add_argument("--ft_epochs", type=int, default=3, help="teacher fine-tuning epochs, early-stopped on dev (default: 3)")
    group.add_argument("--ft_batch_size", type=int, default=32, help="teacher fine-tuning batch size (default: 32)")
    group.add_argument("--ft_learning_rate", type=float, default=5e-5,
                       help="peak learning rate after 10%% linear warm-up, then linear decay (default: 5e-5)")
    group.add_argument("--ft_patience", type=int, default=3,
                       help="stop fine-tuning after this many epochs without a better dev metric (default: 3)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", required=True, metavar="DIR",
                        help="output folder; a rerun with the same settings reuses what is finished there")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for Python, NumPy and TensorFlow (default: $PYTHONHASHSEED, else 42)")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")


def _cmd_teacher(args) -> int:
    from xtremedistil.distill.runner import report, run_teacher
    from xtremedistil.distill.seeding import resolve_seed
    from xtremedistil.distill.teacher import FineTuneConfig

    result = run_teacher(
        task_dir=args.task, model_dir=args.model_dir, checkpoint=args.pt_teacher_checkpoint,
        tagging=args.do_NER, seq_len=args.seq_len, seed=resolve_seed(args.seed),
        model_class=args.pt_teacher, transfer_file=args.transfer_file,
        fine_tune=FineTuneConfig(epochs=args.ft_epochs, batch_size=args.ft_batch_size,
                                 learning_rate=args.ft_learning_rate, patience=args.ft_patience),
    )
    print(report(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    _add_task_flags(teacher)
    _add_teacher_flags(teacher)
    _add_run_flags(teacher)
    teacher.set_defaults(handler=_cmd_teacher)
    return parser


def _configure_logging(quiet: bool) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
    )
    for noisy in ("tensorflow", "absl", "transformers", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(getattr(args, "quiet", False))
    try:
        return args.handler(args)
    except XtremeDistilError as err:
        print(f"xtremedistil {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"xtremedistil {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
