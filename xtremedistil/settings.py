"""Settings declared once, where they are used.

A settings class is a dataclass deriving from `Settings` whose fields are declared with `setting(...)`: the
field's flag name (the original run_xtreme_distil.py's, e.g. `ft_epochs` for `FineTuneConfig.epochs`), its help
text and its limits. From that one declaration come the command line's flags and `--help`, the recipe keys, the
types a recipe value must have, and the one-line errors, which are raised when the object is built -- so a bad
value stops a command before any work, not after an hour of teacher fine-tuning.

Light on purpose (no TensorFlow): `--help` of every command builds its flags from these declarations.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Callable

from xtremedistil.errors import XtremeDistilError

MISSING = dataclasses.MISSING


def setting(default=MISSING, help: str = "", *, flag: str | None = "", minimum=None, below=None, maximum=None,
            positive: bool = False, choices: tuple | Callable[[], Any] | None = None, required: bool = False):
    """A field of a `Settings` class. `flag` is its command-line flag and recipe key without dashes ("" = the
    field's name, None = not settable: derived or internal). Limits: `minimum <= value`, `value < below`,
    `value <= maximum`, `value > 0` with `positive`, `value in choices` (a tuple, or a function giving the
    registered names at check time). `required`: no usable default (None until given; `from_flags` says so)."""
    metadata = {"help": help, "flag": flag, "minimum": minimum, "below": below, "maximum": maximum,
                "positive": positive, "choices": choices, "required": required}
    if required and default is MISSING:
        default = None
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> str | None:
    flag = field.metadata.get("flag", "")
    return None if flag is None else (flag or field.name)


def flag_fields(cls) -> list[tuple[str, dataclasses.Field]]:
    """(flag, field) for every settable field of a settings class, in declaration order."""
    return [(flag_of(f), f) for f in dataclasses.fields(cls) if flag_of(f) is not None]


def _choices(field: dataclasses.Field):
    choices = field.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def check_value(flag: str, field: dataclasses.Field, value) -> None:
    """One-line error when `value` breaks the field's declared limits (None passes: "not given")."""
    if value is None:
        return
    meta, name = field.metadata, f"--{flag}"
    minimum, below, maximum = meta.get("minimum"), meta.get("below"), meta.get("maximum")
    if minimum is not None and below is not None and not minimum <= value < below:
        raise XtremeDistilError(f"{name} must be in [{minimum}, {below}), not {value}")
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise XtremeDistilError(f"{name} must be in [{minimum}, {maximum}], not {value}")
    if minimum is not None and value < minimum:
        raise XtremeDistilError(f"{name} must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise XtremeDistilError(f"{name} must be at most {maximum}, not {value}")
    if meta.get("positive") and not value > 0:
        raise XtremeDistilError(f"{name} must be positive, not {value}")
    choices = _choices(field)
    if choices is not None and value not in choices:
        raise XtremeDistilError(f"{name} '{value}' is not one of {', '.join(map(str, choices))}")


def check_required(fields, values: dict, prefix: str = "") -> None:
    """One line naming every required flag of `fields` ((flag, field) pairs) that `values` lacks."""
    missing = [f"--{flag}" for flag, field in fields if field.metadata.get("required") and values.get(flag) is None]
    if missing:
        raise XtremeDistilError(f"{prefix}missing {', '.join(missing)} (give it as a flag or in --config)")


@dataclasses.dataclass
class Settings:
    """Base of a settings dataclass: building one checks every field against its declaration, then `check()`
    (rules across fields)."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            flag, value = flag_of(field) or field.name, getattr(self, field.name)
            if value is None and field.default not in (None, MISSING):
                raise XtremeDistilError(f"--{flag} needs a value (default: {field.default})")
            check_value(flag, field, value)
        self.check()

    def check(self) -> None:
        pass

    @classmethod
    def from_flags(cls, values: dict, **fixed):
        """An instance from flag-named values (the given ones; defaults for the rest) plus `fixed` fields by
        field name (derived ones, e.g. a seed shared by several sections)."""
        check_required(flag_fields(cls), values)
        given = {field.name: values[flag] for flag, field in flag_fields(cls) if flag in values}
        return cls(**given, **fixed)

    def to_flags(self) -> dict:
        return {flag: getattr(self, field.name) for flag, field in flag_fields(type(self))}


def value_type(cls, field: dataclasses.Field) -> type:
    """The Python type a field's value has (`int | None` -> int), for parsing flags and checking recipes."""
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    hint = hints[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def help_text(field: dataclasses.Field) -> str:
    """A flag's `--help` line: its help, then its default or choices when they say something."""
    text = field.metadata.get("help", "")
    choices = _choices(field)
    if choices is not None:
        text = f"{text}: {', '.join(map(str, choices))}"
    default = field.default
    if field.metadata.get("required") or default is None or isinstance(default, bool):
        return text
    return f"{text} (default: {default})"
