"""The study assets: each study run a partition (train + evaluate, in the gpu pool), and a report per study × profile.

Partition keys: `study_run` is `<study>:<profile>:<label>` (e.g. `source:quick:arch2-batch8`) and
`study_report` is `<study>:<profile>`. A run whose key (settings, data and code version) matches a finished
one is reused; an interrupted run resumes from its checkpoint.
"""

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from flower_pipeline import __version__, code_version
from flower_pipeline.evaluation import EvalSettings, evaluate
from flower_pipeline.features import flower_features, load_feature_network
from flower_pipeline.registry import MLFLOW_FAILURES, MlflowTracking
from flower_pipeline.scaleout import GPU_STEP
from flower_pipeline.storage import atomic_write_bytes, atomic_write_json
from flower_pipeline.study import RunReport, Study, judge, load_study, report_html, run_key
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.training import TrainConfig, pick_device, train

from .config import DEVICE_FIELD
from .evaluation import inception_for
from .features import FeatureNetworkRef
from .ingest import OWNERS
from .resources import FlowerStorage, pick
from .support import image_markdown, user_errors

study_run_partitions = dg.DynamicPartitionsDefinition(name="study_runs")
study_partitions = dg.DynamicPartitionsDefinition(name="studies")


def study_run_key(study: str, profile: str, label: str) -> str:
    return f"{study}:{profile}:{label}"


@dataclass(frozen=True)
class StudyRunResult:
    partition: str
    run_key: str  # what the result depends on; a new key means a new training
    label: str
    variant: str
    arch: str
    cache_hash: str
    feature_network: str  # the network its fd_flowers was measured with
    path: str
    metrics: dict[str, float]
    snapshot_metrics: dict[str, float]  # the same measures for the generator kept at `snapshot`
    snapshot: int | None
    unavailable: dict[str, str]
    it_per_s: float
    seconds: float
    mlflow_run_id: str


@dataclass(frozen=True)
class StudyReport:
    study: str
    profile: str
    path: str  # report.html
    verdicts: dict[str, str]


class StudyConfig(dg.Config):
    study_file: str | None = Field(None, description="The study file, where the study is not one of the project's "
                                                     "own (flower_pipeline/studies/<name>.yaml).")
    parent_run_id: str | None = Field(None, description="The MLflow run of this study invocation; its runs nest "
                                                        "under it (the CLI sets it).")
    device: str = DEVICE_FIELD[1]


def _study(config: StudyConfig, name: str) -> Study:
    return load_study(config.study_file or name)


@dg.asset(partitions_def=study_run_partitions, pool="gpu", group_name="study", kinds={"pytorch", "mlflow"},
          owners=OWNERS, code_version=__version__, op_tags=GPU_STEP,
          ins={"tensor_cache": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
               "feature_network": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def study_run(context: dg.AssetExecutionContext, config: StudyConfig, tensor_cache: Any, feature_network: Any,
              storage: FlowerStorage, mlflow: MlflowTracking) -> StudyRunResult:
    """One run of a study: trained, evaluated on its variant, logged as a nested MLflow run; reused when done."""
    name, profile, label = context.partition_key.split(":")
    with user_errors(mlflow):
        study = _study(config, name)
        run = study.plan(profile, (label,))[0]
        cache_ref = pick(tensor_cache, run.variant, "variant")
        network: FeatureNetworkRef = pick(feature_network, run.variant, "variant")
        key = run_key(run, cache_ref.content_hash, code_version())
        out_dir = storage.root / "studies" / f"{name}-{profile}" / label / key
        done = out_dir / "result.json"
        if done.is_file():  # the same settings, data and code finished before
            result = StudyRunResult(**json.loads(done.read_text()))
            context.log.info(f"{label}: reused the finished run {key}")
            context.add_output_metadata({"reused": True, "run_key": key, **_shown(result)})
            return result
        cache, device = TensorCache.load(cache_ref.path), pick_device(config.device)
        settings = TrainConfig(**run.config).resolved()
        run_id = mlflow.start_run(f"{name}:{profile}:{label}", {
            "mlflow.parentRunId": config.parent_run_id or "", "study": name, "profile": profile, "label": label,
            "variant": run.variant, "arch": run.arch, "run_key": key, "dagster_run_id": context.run.run_id})
        mlflow.log_params(run_id, {**asdict(settings), "variant": run.variant,
                                   **{f"changes.{k}": v for k, v in run.changes.items()}})
        try:
            trained = train(settings, cache, out_dir, device=config.device, snapshots=run.snapshots,
                            on_log=lambda record: _log(context, mlflow, run_id, label, record),
                            on_resume=lambda it: context.log.info(f"{label}: resumed from iteration {it}"))
            net = load_feature_network(Path(network.path), device) if network.path else None
            flowers = partial(flower_features, net, device=device) if net else None
            evaluation = EvalSettings(**run.evaluation)
            inception, no_inception = inception_for(evaluation, device)
            measure = partial(evaluate, out_dir, cache, evaluation, device=device, flowers=flowers,
                              no_flowers_reason=network.unavailable or "", features=inception,
                              no_features_reason=no_inception)
            final = measure()
            snapshot = run.snapshots[0] if run.snapshots else None
            early = measure(iteration=snapshot) if snapshot else None
            mlflow.log_metrics(run_id, final.metrics, trained.iterations)
            mlflow.log_artifact(run_id, trained.files["final_grid"])
            mlflow.log_artifact(run_id, final.files["metrics"].parent, "evaluation")
        except BaseException as err:
            if not isinstance(err, MLFLOW_FAILURES):  # with MLflow down there is no one to tell
                mlflow.end_run(run_id, "FAILED")
            raise
        mlflow.end_run(run_id)
        result = StudyRunResult(context.partition_key, key, label, run.variant, run.arch, cache_ref.content_hash,
                                network.network_id, str(out_dir), final.metrics,
                                early.metrics if early else {}, snapshot, final.unavailable,
                                trained.iterations / max(trained.seconds, 1e-9), trained.seconds, run_id)
        atomic_write_json(done, asdict(result))  # last: only a finished run is ever reused
    context.add_output_metadata({"reused": False, "run_key": key, **_shown(result)})
    return result


def _log(context: dg.AssetExecutionContext, mlflow: MlflowTracking, run_id: str, label: str,
         record: dict[str, float]) -> None:
    context.log.info(f"{label}: iter {int(record['iteration'])} {record['it_per_s']:.1f} it/s D(x) "
                     f"{record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f}")
    mlflow.log_metrics(run_id, {k: v for k, v in record.items() if k != "iteration"}, int(record["iteration"]))


def _shown(result: StudyRunResult) -> dict[str, Any]:
    shown: dict[str, Any] = {k: round(result.metrics[k], 4) for k in (
        "d_real_train_mean", "d_real_holdout_mean", "d_fake_mean", "fd_flowers", "precision", "recall",
        "colour_coverage", "high_frequency_ratio") if k in result.metrics}
    grid = Path(result.path) / "final_grid.png"
    if grid.is_file():
        shown["samples"] = image_markdown(grid.read_bytes(), result.label)
    return {**shown, "mlflow_run_id": result.mlflow_run_id, "it_per_s": round(result.it_per_s, 1)}


@dg.asset(partitions_def=study_partitions, group_name="study", kinds={"html", "mlflow"}, owners=OWNERS,
          code_version=__version__, ins={"study_run": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def study_report(context: dg.AssetExecutionContext, config: StudyConfig, study_run: Any, storage: FlowerStorage,
                 mlflow: MlflowTracking) -> StudyReport:
    """The study's report: every run in a table, sample grids side by side, each claim with its numbers and a
    verdict. One self-contained HTML page, also logged to MLflow."""
    name, profile = context.partition_key.split(":")
    with user_errors(mlflow):
        study = _study(config, name)
        records = study_run if isinstance(study_run, dict) else {study_run.partition: study_run}
        reports, metrics = [], {}
        for run in study.plan(profile):
            record = records.get(study_run_key(name, profile, run.label))
            if record is None:
                continue
            folder = Path(record.path)
            timeline = folder / "evaluation" / "timeline.png"
            reports.append(RunReport(run, record.metrics, record.unavailable, str(folder / "final_grid.png"),
                                     str(timeline) if timeline.is_file() else None,
                                     json.loads((folder / "history.json").read_text()), record.it_per_s,
                                     record.seconds))
            metrics[run.label] = record.metrics
            if record.snapshot_metrics:
                metrics[f"{run.label}@snapshot"] = record.snapshot_metrics
        verdicts = judge(study, metrics, study.profiles[profile].stand_ins)
        page = report_html(study, profile, reports, verdicts)
        path = atomic_write_bytes(storage.root / "studies" / f"{name}-{profile}" / "report.html", page.encode())
        run_id = config.parent_run_id or mlflow.start_run(f"{name}:{profile} report", {"study": name,
                                                                                     "profile": profile})
        mlflow.log_artifact(run_id, path)
        if not config.parent_run_id:
            mlflow.end_run(run_id)
    table = "| claim | verdict | numbers |\n|---|---|---|\n" + "\n".join(
        f"| {c.text} | **{verdicts[c.id].status}** | {verdicts[c.id].evidence} |" for c in study.claims)
    context.add_output_metadata({"claims": dg.MetadataValue.md(table), "runs_finished": len(reports),
                                 "runs": len(study.runs), "report": dg.MetadataValue.path(str(path)),
                                 "mlflow_run_id": run_id})
    return StudyReport(name, profile, str(path), {k: v.status for k, v in verdicts.items()})


study_job = dg.define_asset_job("study_runs", selection=[study_run],
                                description="Train and evaluate one run of a study (a partition per run).")
study_report_job = dg.define_asset_job("study_reports", selection=[study_report],
                                       description="Build a study's report from its finished runs.")
