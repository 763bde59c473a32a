"""The model registry's rules, and lookups from Python.

    from flower_pipeline.registry import load_generator
    generator = load_generator("flowers17-color-64-arch1")     # the champion
    images = generator.generate(16, seed=0)                    # uint8 N×C×H×W, same seed → same images

A version becomes `champion` only when it passed the quality gate and beats
the current champion on FID (or, where either lacks FID, on fd_flowers in the
same feature network, else on the colour distance). `latest` is MLflow's own
reserved alias for the newest version. The store is $MLFLOW_TRACKING_URI, else
SQLite in the data folder; MLflow itself is reached through `MlflowTracker`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flower_pipeline.layout import DataLayout
from flower_pipeline.metrics import RANKING, SPACE_TAGS, from_version_tags
from flower_pipeline.models import FlowerGenerator
from flower_pipeline.tracking import CHAMPION, MlflowTracker, mlflow_errors


def model_name(variant: str, arch: str) -> str:
    return f"{variant}-{arch}"


@dataclass(frozen=True)
class RegisteredVersion:
    model: str
    version: int
    promotion: str  # champion or not promoted
    reason: str
    champion_version: int | None
    run_id: str


def register_generator(store: MlflowTracker, name: str, run_id: str, generator_file: Path, *, gate: tuple[bool, str],
                       metrics: dict[str, float], spaces: dict[str, str], tags: dict[str, str], description: str,
                       log: Callable[[str], None]) -> RegisteredVersion:
    """Register the run's generator file (its final generator, or a scored snapshot) as a new version of `name`
    (once per run, however often retried) and move `champion` to it when it passed the quality gate and beats
    the champion. `spaces` names the feature spaces its numbers were measured in (SPACE_TAGS): only numbers
    from the same space are compared."""
    version = store.version_of_run(name, run_id)
    if version is None:
        model = store.log_generator(run_id, name, generator_file)
        version = store.register(name, run_id, model, tags, description)
    else:
        log(f"{name} version {version.version} was already registered from run {run_id}")
    champion = store.version_by_alias(name, CHAMPION)
    if champion is not None and champion.version == version.version:
        promoted, reason = True, "already the champion"
    else:
        held = ({**from_version_tags(champion.tags), **{tag: champion.tags.get(tag) for tag in SPACE_TAGS}}
                if champion else None)
        promoted, reason = promotion_decision(*gate, {**metrics, **spaces}, held)
        if promoted:
            store.set_alias(name, CHAMPION, version.version)
    decision = CHAMPION if promoted else "not promoted"
    champion_version = version.version if promoted else (champion.version if champion else None)
    store.set_version_tags(name, version.version, {"promotion": decision, "promotion_reason": reason})
    store.set_tags(run_id, {"registered_model": name, "registered_version": version.version,
                           "promotion": decision, "promotion_reason": reason})
    log(f"{name} v{version.version}: {decision} ({reason})")
    return RegisteredVersion(name, int(version.version), decision, reason,
                             int(champion_version) if champion_version is not None else None, run_id)



# --- what may become the champion -------------------------------------------------------------------------


def ranking_metric(*versions: dict[str, Any]) -> str:
    """The first ranked metric (metrics.RANKING: FID, then fd_effnet, then fd_flowers) that every version has,
    measured in one feature space where it has one; else the last, colour distance. Lower is better for all.

    D scores do not rank versions: each version is judged by its own discriminator.
    """
    for metric in RANKING[:-1]:
        if all(v.get(metric.name) is not None for v in versions) and (
                metric.space is None or (versions[0].get(metric.space) is not None
                                         and all(v.get(metric.space) == versions[0].get(metric.space)
                                                 for v in versions))):
            return metric.name
    return RANKING[-1].name


def promotion_decision(gate_passed: bool, gate_reason: str, new: dict[str, Any],
                       champion: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether the new version becomes champion, and why."""
    if not gate_passed:
        return False, f"quality gate {gate_reason}"
    if champion is None:
        return True, f"first version to pass the quality gate ({gate_reason})"
    metric = ranking_metric(new, champion)
    if new.get(metric) is None or champion.get(metric) is None:
        return True, f"the champion has no {metric} to compare; the new version passed the gate"
    better = float(new[metric]) < float(champion[metric])
    verdict = "beats" if better else "does not beat"
    return better, f"{metric} {float(new[metric]):.4g} {verdict} the champion's {float(champion[metric]):.4g}"


# --- lookups from Python ---------------------------------------------------------------------------------


def tracking(tracking_uri: str | None = None, data_dir: Path | str | None = None) -> MlflowTracker:
    """The MLflow store the pipeline uses (or the one given)."""
    return MlflowTracker(DataLayout.at(data_dir), tracking_uri)


def load_generator(name: str, alias: str | None = None, version: int | str | None = None, *,
                   tracking_uri: str | None = None, data_dir: Path | str | None = None,
                   device: str = "cpu") -> FlowerGenerator:
    """A registered generator by alias (default: champion) or version number."""
    store = tracking(tracking_uri, data_dir)
    with mlflow_errors(store):
        return store.load_generator(name, alias=alias, version=version, device=device)


def list_models(*, tracking_uri: str | None = None, data_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Every registered version: name, version, aliases, creation time (ms) and tags (variant, arch, eval.*)."""
    store = tracking(tracking_uri, data_dir)
    with mlflow_errors(store):
        return store.registered_models()
