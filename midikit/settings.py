"""Field declarations for config dataclasses (`setting(...)`, a typed `Setting`), and what is generated
from them: value checks, argparse flags and (in `midikit.widgets.fields`) widgets. One declaration per
setting, so a flag, a form field and the check behind both can never disagree.

    epochs: int = setting(20, "passes over the training tokens", group="training", ge=1)

No torch and no miditok here: `python -m midikit --help` imports this and nothing heavy.
"""

from __future__ import annotations

import argparse
import functools
import math
import operator
import os
import typing
from dataclasses import MISSING, Field, dataclass, field, fields

from .errors import ConfigError

NUMBER_TYPES = (int, float)


@dataclass(frozen=True)
class Setting:
    """What a config field's declaration says beyond its type and default.

    help: one line for --help and the form's tooltip; group: the --help section; label: the form's
    text (default: the name); choices / ge / gt / le / lt: what values are valid; none: what None
    means ("the preset's"), for --help and the form; hint: advice added to the error for a bad value;
    model_types: the model types a model field applies to; seed_flags: the original csce585-midi
    project's spellings of the same flag (without --); aliases: midikit's own earlier spellings; flag: a
    different flag spelling (e.g. "--no_progress" for a bool that defaults to True); cli: False for
    fields with no flag (set by the program, not the user); kept_on_resume: a training setting that a
    resumed run keeps from its checkpoint (True) or takes from the session (False)."""

    help: str = ""
    group: str = ""
    label: str | None = None
    choices: tuple | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    none: str | None = None
    model_types: tuple | None = None
    seed_flags: tuple = ()
    aliases: tuple = ()
    flag: str | None = None
    cli: bool = True
    hint: str = ""
    kept_on_resume: bool | None = None

    def bounds(self) -> list[tuple[str, float]]:
        """(sign, limit) of each bound the value must keep: [(">", 0.0), ("<=", 1.0)]."""
        signs = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return [(sign, limit) for sign, limit in signs if limit is not None]


_METADATA_KEY = "midikit"
_UNDECLARED = Setting()


def setting(default=MISSING, help: str = "", *, default_factory=MISSING, choices=None, model_types=None, seed_flags=(),
            aliases=(), **declared) -> Field:
    """A dataclass field with its declaration (`Setting`: the keyword arguments are its fields)."""
    declaration = Setting(help=help, choices=tuple(choices) if choices else None, seed_flags=tuple(seed_flags),
                          model_types=tuple(model_types) if model_types else None, aliases=tuple(aliases), **declared)
    metadata = {_METADATA_KEY: declaration}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def declared(f: Field) -> Setting:
    """What field `f` was declared with (a field made without `setting` declares nothing)."""
    return f.metadata.get(_METADATA_KEY, _UNDECLARED)


def value_type(cls, name: str) -> tuple[type, bool]:
    """(the field's base type, whether None is allowed), from its annotation."""
    hint = _type_hints(cls)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    return (typing.get_origin(base) or base), optional


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


# --------------------------------------------------------------------------- checks


def plain(value):
    """numpy scalars as Python numbers (a checkpoint loads only plain Python with weights_only=True)."""
    kind = type(value).__module__
    if kind == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


def check_fields(config) -> None:
    """Check every field of a config dataclass against its metadata, converting numpy scalars to
    Python numbers in place. Raises ConfigError naming the field, the bad value and what is valid."""
    for f in fields(config):
        value = plain(getattr(config, f.name))
        base, optional = value_type(type(config), f.name)
        if value is None:
            if not optional:
                raise ConfigError(f"{f.name} must be set, got None.")
            continue
        value = _check_type(f.name, value, base)
        _check_range(f, value)
        object.__setattr__(config, f.name, value)


def _check_type(name: str, value, base: type):
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, base):
            raise ConfigError(f"{name} must be {'an integer' if base is int else 'a number'}, got {value!r}.")
        if base is float and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}.")
    elif base is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}.")
    elif base is str and isinstance(value, os.PathLike):
        value = os.fspath(value)  # folders may come as Path objects
    elif base is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}.")
    return value


def _check_range(f: Field, value) -> None:
    meta = declared(f)
    hint = f" {meta.hint}" if meta.hint else ""
    if meta.choices and value not in meta.choices:
        raise ConfigError(f"Unknown {f.name} {value!r}: choose one of {', '.join(map(str, meta.choices))}.{hint}")
    holds = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
    if not all(holds[sign](value, limit) for sign, limit in meta.bounds()):
        kind = "an integer" if isinstance(value, int) else "a number"
        wanted = kind + " " + " and ".join(f"{sign} {limit}" for sign, limit in meta.bounds())
        raise ConfigError(f"{f.name} must be {wanted}, got {value!r}.{hint}")


class Checked:
    """A config dataclass validated the one way every config is: `validate()` runs the checks in its
    fields' declarations, then `check()`, the class's checks across fields (none by default)."""

    def validate(self):
        check_fields(self)
        self.check()
        return self

    def check(self) -> None:
        """Checks that involve several fields; raise ConfigError naming the values and the fix."""


def _escaped(help_text: str) -> str:
    return help_text.replace("%", "%%")  # argparse %-formats help: a literal "5%" must reach it as "5%%"


def describe_valid(f: Field) -> str:
    """What values a field takes, in words (for --help)."""
    return " and ".join(f"{sign} {limit}" for sign, limit in declared(f).bounds())


# --------------------------------------------------------------------------- argparse


def add_flags(parser: argparse.ArgumentParser, cls, *, skip=(), only=None, optional_overrides: bool = False,
              groups: dict[str, argparse._ArgumentGroup] | None = None) -> dict:
    """One flag per field of `cls` (with its seed spellings as aliases), in argparse groups named by
    the fields' `group`. With `optional_overrides`, every flag defaults to "not given", so the
    caller can tell what the user set (model sizes override a preset's). Returns the groups."""
    groups = {} if groups is None else groups
    for f in fields(cls):
        if not declared(f).cli or f.name in skip or (only is not None and f.name not in only):
            continue
        title = declared(f).group or "options"
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        default = f.default if f.default is not MISSING else f.default_factory()  # not __post_init__'s resolution
        _add_flag(groups[title], cls, f, default, optional_overrides)
    return groups


def _add_flag(group, cls, f: Field, default, optional_overrides: bool) -> None:
    meta = declared(f)
    base, _ = value_type(cls, f.name)
    aliases = [f"--{alias}" for alias in meta.aliases]
    seed_names = [f"--{alias}" for alias in meta.seed_flags]
    names = [meta.flag or f"--{f.name}"] + aliases + seed_names
    also = (([f"also {', '.join(aliases)}"] if aliases else [])
            + ([f"the original project's {', '.join(seed_names)} works too"] if seed_names else []))
    help_text = meta.help + (f" ({'; '.join(also)})" if also else "")
    if base is bool:
        action = "store_false" if (meta.flag or "").startswith("--no_") else "store_true"
        group.add_argument(*names, dest=f.name, action=action,
                           default=argparse.SUPPRESS if optional_overrides else default, help=_escaped(help_text))
        return
    shown = meta.none if default is None and meta.none else default
    if isinstance(shown, tuple):
        shown = ",".join(map(str, shown))
    if optional_overrides:
        help_text += " (default: " + (meta.none or "the preset's") + ")"
    elif shown not in (None, ""):
        help_text += f" (default: {shown})"
    valid = describe_valid(f)
    if valid:
        help_text += f"; {valid}"
    kwargs = dict(dest=f.name, type=_parser_for(base, f.name), help=_escaped(help_text),
                  default=argparse.SUPPRESS if optional_overrides else default)
    if meta.choices:
        kwargs["choices"] = meta.choices
        kwargs["metavar"] = "{" + ",".join(map(str, meta.choices)) + "}"
    group.add_argument(*names, **kwargs)


def _parser_for(base: type, name: str):
    if base is int:
        return int
    if base is float:
        return float
    return str


def from_args(cls, args: argparse.Namespace, **extra):
    """An instance of `cls` from the parsed flags (fields without a flag keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    values.update(extra)
    return cls(**values)


def given(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` the user set on the command line (flags added with optional_overrides);
    fields without a flag of their own (a model's model_type: the command's) are not the user's."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if declared(f).cli and hasattr(args, f.name)}
