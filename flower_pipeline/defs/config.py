"""Dagster config classes generated from the core's settings dataclasses, so each default lives once."""

import hashlib
import json
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from flower_pipeline import __version__
from flower_pipeline.evaluation import EvalSettings
from flower_pipeline.settings import setting_fields
from flower_pipeline.training import DEFAULT_DEVICE, TrainConfig

DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
DEVICE_FIELD = (str, Field(DEFAULT_DEVICE, description=DEVICE_HELP))


def config_class(name: str, settings: type, skip: tuple[str, ...] = (), **extra: Any) -> type[dg.Config]:
    """A dg.Config with one field per setting of `settings` (its default and help), plus `extra` fields."""
    fields: dict[str, Any] = {}
    for field, kind, default, help_text, choices in setting_fields(settings):
        if field in skip:
            continue
        described = f"{help_text} One of: {', '.join(choices)}." if choices else help_text
        fields[field] = (kind | None if default is None else kind, Field(default, description=described))
    return create_model(name, __base__=dg.Config, **fields, **extra)


# The architecture comes from the partition; the device is where, not what, so it is no training setting; a
# sweep's seeds are several trainings, each with its own `seed`.
SEEDS_FIELD = (list[int], Field([], description="A seed sweep: these seeds trained side by side in one fused step, "
                                                "the best registered. Empty: `seed` alone."))
TrainingConfig = config_class("TrainingConfig", TrainConfig, skip=("arch",), device=DEVICE_FIELD, seeds=SEEDS_FIELD)
EvaluationConfig = config_class("EvaluationConfig", EvalSettings, device=DEVICE_FIELD)


def asset_code_version(settings: type) -> str:
    """An asset's code version: the package version and its settings' defaults, so Dagster shows the asset as
    changed when either does."""
    defaults = json.dumps({f: d for f, _, d, _, _ in setting_fields(settings)}, sort_keys=True, default=str)
    return f"{__version__}-{hashlib.sha256(defaults.encode()).hexdigest()[:8]}"


def settings_from(config: dg.Config, settings: type, **fixed: Any) -> Any:
    """The core settings dataclass from a generated config (extra fields such as device dropped)."""
    names = {field for field, *_ in setting_fields(settings)}
    return settings(**{k: v for k, v in config.model_dump().items() if k in names}, **fixed)
