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
from typing import Any


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its help text (and, for text settings, the allowed values)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


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
