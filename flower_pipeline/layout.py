"""Every path under the data root, in one place.

    data/
      <dataset>/downloads/                      archives and label tables as fetched
      <dataset>/extracted/                      the archive's images
      <dataset>/resized/<size>px-<mode>-<crop>/ images.npy, one variant's resized images
      <dataset>/cache/<hash>/                   tensor caches (content-keyed)
      <dataset>/features/<network id>/          feature networks
      <dataset>/features/<space>-<cache>.npz    the real images' features in a pretrained space (EfficientNet)
      <dataset>/training/<variant>/<arch>/<fingerprint>/   one training (checkpoint, samples, generator)
      studies/<study>-<profile>/<label>/<key>/  a study run; report.html, findings.json beside the labels
      studies/<study>-<profile>/fused+<key>/    a fused group's checkpoint while it trains
      stage_outputs/<asset>/<partition>.json    the records Dagster hands between assets
      mlflow.db, mlartifacts/                   the local MLflow store (when no server is set)

A training's folder (RunFiles) holds generator.pt, final_state.pt, checkpoint.pt while it trains,
generator_<iteration>.pt snapshots (snapshot_scores.png: their scores), samples/iter_<iteration>.png,
final_grid.png, history.json, curves.png, result.json (a study run), and evaluation/ (or
evaluation_<iteration>/ for a snapshot; EvaluationFiles).

The data root is $FLOWER_PIPELINE_DATA_DIR, else `data/` beside the Dagster
home: one root per instance, wherever a command runs. A name becomes a path
part only after `path_part` checked it: no separator, no `..`, nothing hidden.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from flower_pipeline.environment import DAGSTER_HOME_ENV, DATA_DIR_ENV
from flower_pipeline.errors import PipelineError

PROJECT_DAGSTER_HOME = Path(__file__).resolve().parents[1] / "dagster_home"  # the instance of a source checkout
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:|@+-]{0,199}")


def default_data_dir() -> Path:
    """$FLOWER_PIPELINE_DATA_DIR, else `data/` beside the Dagster home ($DAGSTER_HOME, else the project's
    dagster_home/). Never the current directory's, so commands run from anywhere and the UI share one data
    root, and the runs an instance records point at data that exists."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser().resolve()
    return Path(os.environ.get(DAGSTER_HOME_ENV) or PROJECT_DAGSTER_HOME).expanduser().resolve().parent / "data"


def path_part(name: str, what: str = "name") -> str:
    """`name` as one path component, or a one-line error: letters, digits and `_.:|@+-`, no `..`."""
    if not _PART.fullmatch(name) or ".." in name:
        raise PipelineError(f"{what} {name!r} cannot name a folder: use letters, digits and - _ . only, "
                            "starting with a letter or digit, at most 200 characters")
    return name


@dataclass(frozen=True)
class DataLayout:
    """The folders and files under one data root."""

    root: Path

    @classmethod
    def at(cls, data_dir: Path | str | None = None) -> DataLayout:
        return cls(Path(data_dir).expanduser().resolve() if data_dir else default_data_dir())

    def dataset(self, dataset: str) -> Path:
        return self.root / path_part(dataset, "dataset")

    def downloads(self, dataset: str) -> Path:
        return self.dataset(dataset) / "downloads"

    def extracted(self, dataset: str) -> Path:
        return self.dataset(dataset) / "extracted"

    def resized(self, dataset: str, size: int, mode: str, crop: str) -> Path:
        return self.dataset(dataset) / "resized" / path_part(f"{size}px-{mode}-{crop}")

    def caches(self, dataset: str) -> Path:
        return self.dataset(dataset) / "cache"

    def feature_network(self, dataset: str, network_id: str) -> Path:
        return self.dataset(dataset) / "features" / path_part(network_id, "feature network")

    @staticmethod
    def reference_features(cache_dir: Path | str, space: str) -> Path:
        """A tensor cache's images in a pretrained feature space, kept beside the dataset's feature networks."""
        cache_dir = Path(cache_dir)
        return cache_dir.parent.parent / "features" / path_part(f"{space}-{cache_dir.name}", "feature file")

    def training(self, dataset: str, variant: str, arch: str, fingerprint: str) -> Path:
        return (self.dataset(dataset) / "training" / path_part(variant, "variant") / path_part(arch, "architecture")
                / path_part(fingerprint))

    def study(self, study: str, profile: str) -> Path:
        return self.root / "studies" / path_part(f"{study}-{profile}", "study")

    def study_run(self, study: str, profile: str, label: str, key: str) -> Path:
        return self.study(study, profile) / path_part(label, "run label") / path_part(key)

    def study_group(self, study: str, profile: str, key: str) -> Path:
        """A fused group's checkpoint folder ('+' never occurs in a run label, so no label names it)."""
        return self.study(study, profile) / path_part(f"fused+{key}")

    def study_report(self, study: str, profile: str) -> Path:
        return self.study(study, profile) / "report.html"

    def study_findings(self, study: str, profile: str) -> Path:
        """The report's verdicts, margins and quoted numbers as data (study_report.findings)."""
        return self.study(study, profile) / "findings.json"

    def finished_study_runs(self, study: str, profile: str, label: str) -> list[Path]:
        return sorted((self.study(study, profile) / path_part(label, "run label")).glob("*/result.json"))

    def stage_record(self, asset: list[str], partition: str | None) -> Path:
        name = (partition or "all").replace("|", "__")  # multi-partition keys: arch1|flowers17-color-64
        return (self.root / "stage_outputs" / "/".join(path_part(p, "asset") for p in asset)
                / f"{path_part(name, 'partition')}.json")

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def server_artifacts(self) -> Path:
        """Where `stack up`'s MLflow server keeps artifacts."""
        return self.root / "mlflow-artifacts"

    def demo_grid(self, model: str) -> Path:
        return self.root / f"demo-{path_part(model, 'model')}.png"


@dataclass(frozen=True)
class EvaluationFiles:
    """What one evaluation writes: its pictures and its numbers."""

    root: Path

    @property
    def samples(self) -> Path:
        return self.root / "samples.png"

    @property
    def nearest_pairs(self) -> Path:
        return self.root / "nearest_pairs.png"

    @property
    def colours(self) -> Path:
        return self.root / "colours.png"

    @property
    def mode(self) -> Path:
        return self.root / "mode.png"

    @property
    def timeline(self) -> Path:
        return self.root / "timeline.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


@dataclass(frozen=True)
class RunFiles:
    """The files of one training's folder (a solo training, a member of a fused group, a study run)."""

    root: Path

    @property
    def generator(self) -> Path:
        return self.root / "generator.pt"

    def snapshot(self, iteration: int) -> Path:
        return self.root / f"generator_{iteration:06d}.pt"

    @property
    def snapshot_curve(self) -> Path:
        """The ranking metric of each scored snapshot (eval_every), the chosen one marked."""
        return self.root / "snapshot_scores.png"

    @property
    def final_state(self) -> Path:
        return self.root / "final_state.pt"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def sample_grid(self, iteration: int) -> Path:
        return self.samples / f"iter_{iteration:06d}.png"

    @property
    def final_grid(self) -> Path:
        return self.root / "final_grid.png"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    def evaluation(self, iteration: int | None = None) -> EvaluationFiles:
        """The final generator's evaluation, or a snapshot's."""
        return EvaluationFiles(self.root / ("evaluation" if iteration is None else f"evaluation_{iteration:06d}"))
