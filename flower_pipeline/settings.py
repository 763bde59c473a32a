"""Settings defined once: a dataclass field with its default and help text.

The training and evaluation settings are frozen dataclasses whose fields are
made with `setting(default, help)`. The command-line flags (`add_flags`) and
the Dagster config classes (`flower_pipeline.defs.config`) are generated from
them, so a default or a description lives in exactly one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from flower_pipeline.errors import PipelineError
from flower_pipeline.storage import read_bounded


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None,
            bounds: tuple[float, float] | None = None) -> Any:
    """A dataclass field carrying its help text (and, for text settings, the allowed values; for numbers, the
    range `check_bounds` enforces)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


def check_bounds(settings: Any) -> None:
    """Every numeric setting of a settings dataclass inside its range, else a one-line error naming it: the one
    check behind the command line, Dagster config, studies and the retraining profile."""
    for f in dataclasses.fields(settings):
        bounds, value = f.metadata.get("bounds"), getattr(settings, f.name)
        if bounds is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not bounds[0] <= value <= bounds[1]:
            low, high = (b if isinstance(b, int) else f"{b:g}" for b in bounds)  # ints whole: 2147483647
            raise PipelineError(f"{f.name} must be a number from {low} to {high}, got {value!r}")


def setting_fields(cls: type) -> list[tuple[str, type, Any, str, tuple[str, ...] | None]]:
    """(name, type without None, default, help, choices) of each setting of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # `float | None`: the architecture's default when None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        rows.append((f.name, kind, f.default, f.metadata.get("help", ""), f.metadata.get("choices")))
    return rows


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One --flag per setting; a flag left out keeps the dataclass default (its value stays None)."""
    for name, kind, default, help_text, choices in setting_fields(cls):
        if name in skip:
            continue
        shown = "the architecture's" if default is None else default
        options: dict[str, Any] = {"default": None, "help": f"{help_text} (default: {shown})"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
            if choices:
                options["choices"] = choices
        parser.add_argument("--" + (prefix + name).replace("_", "-"), dest=prefix + name, **options)


def given_flags(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The settings of `cls` given on the command line, by field name."""
    return {name: value for name, *_ in setting_fields(cls)
            if (value := getattr(args, prefix + name, None)) is not None}


MAX_SETTINGS_BYTES = 1 << 20  # a study or profile is a few KiB
MAX_ALIASES = 100  # YAML aliases: a few are handy; thousands are a "billion laughs"


def read_settings_file(path: Path, what: str) -> Any:
    """A YAML settings file (a study, the retraining profile, an MLflow model's MLmodel), bounded: a regular
    file of at most 1 MiB (never a FIFO or a device, which would block or never end), safely parsed with at
    most MAX_ALIASES aliases. Every failure is one line naming the file."""
    import yaml

    class Bounded(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                Bounded.aliases += 1
                if Bounded.aliases > MAX_ALIASES:
                    raise PipelineError(f"{what} {path} uses more than {MAX_ALIASES} YAML aliases; refused")
            return super().compose_node(parent, index)

    text = read_bounded(path, what, MAX_SETTINGS_BYTES)
    try:
        return yaml.load(text, Loader=Bounded)
    except yaml.YAMLError as err:
        raise PipelineError(f"cannot read the {what} {path}: {str(err).splitlines()[0]}") from None
