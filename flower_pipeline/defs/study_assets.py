"""The study assets: each study run a partition (train + evaluate, in the gpu pool), and a report per study × profile.

Partition keys: `study_run` is `<study>:<profile>:<label>` (e.g. `source:quick:arch2-batch8`) and
`study_report` is `<study>:<profile>`. A run whose key (settings, data and code version) matches a finished
one is reused; an interrupted run resumes from its checkpoint. The work is `flower_pipeline.study`'s.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from flower_pipeline import __version__
from flower_pipeline.errors import PipelineError
from flower_pipeline.layout import RunFiles
from flower_pipeline.metrics import SUMMARY
from flower_pipeline.scaleout.heartbeat import step_key, step_watch
from flower_pipeline.scaleout.settings import GPU_STEP
from flower_pipeline.study import (
    MAX_PARALLEL,
    Study,
    StudyReport,
    build_report,
    load_study,
    run_group,
    study_parallelism,
)
from flower_pipeline.training import DEFAULT_DEVICE

from .config import DEVICE_HELP
from .data_assets import OWNERS
from .generator_assets import dagster_tags
from .resources import FlowerStorage, MlflowTracking, pick
from .support import image_markdown, mlflow_link, step_log, user_errors

study_run_partitions = dg.DynamicPartitionsDefinition(name="study_runs")
study_partitions = dg.DynamicPartitionsDefinition(name="studies")


class StudyConfig(dg.Config):
    study_file: str | None = Field(None, description="The study file, where the study is not one of the project's "
                                                     "own (flower_pipeline/studies/<name>.yaml).")
    parent_run_id: str | None = Field(None, description="The MLflow run of this study invocation; its runs nest "
                                                        "under it (the CLI sets it).")
    device: str = Field(DEFAULT_DEVICE, description=DEVICE_HELP)
    fuse: bool = Field(True, description="Train each run with its fused group (the runs of its variant that share "
                                         "its settings but seed, learning rate and the like), as one model; off, "
                                         "each run alone. A run's group is part of its key.")
    parallel: int = Field(0, ge=0, le=MAX_PARALLEL,
                          description="On a CPU, fused groups trained at once in one step, each on one thread (0: "
                                      "one per core); on a GPU one at a time.")


def _study(config: StudyConfig, name: str) -> Study:
    return load_study(config.study_file or name)


@dg.asset(partitions_def=study_run_partitions, pool="gpu", group_name="study", kinds={"pytorch", "mlflow"},
          owners=OWNERS, code_version=__version__, op_tags=GPU_STEP,
          backfill_policy=dg.BackfillPolicy.single_run(),  # a fused group: several partitions, one step
          ins={"tensor_cache": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
               "feature_network": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def study_run(context: dg.AssetExecutionContext, config: StudyConfig, tensor_cache: Any, feature_network: Any,
              storage: FlowerStorage, mlflow: MlflowTracking) -> Any:
    """Runs of a study: trained, evaluated on their variant, each logged as a nested MLflow run; reused when
    done. A run of several partitions (a range, as `study run` launches a fused group) trains them side by
    side as one model in this one step, and materializes each partition with its own metadata."""
    keys = list(context.partition_keys)
    parts = [key.split(":") for key in keys]
    tracker = mlflow.tracker
    step = step_watch(context.instance, context.run.run_id, step_key(context))
    with user_errors(tracker), step as run_ended:
        (name, profile), labels = _one_study(keys, parts), [label for *_, label in parts]
        study = _study(config, name)
        variants = {study.plan(profile, (label,))[0].variant for label in labels}
        if len(variants) > 1:
            raise PipelineError(f"the runs {', '.join(labels)} are on several variants ({', '.join(sorted(variants))})"
                                "; runs trained in one step must share one (flower-pipeline study run groups them)")
        variant = variants.pop()
        results = run_group(
            tracker, storage.layout, study, profile, labels, pick(tensor_cache, variant, "variant"),
            pick(feature_network, variant, "variant"), fuse=config.fuse, device=config.device,
            parallel=study_parallelism(config.parallel, config.device), log=step_log(context),
            stop=run_ended,
            tags={**dagster_tags(context), "mlflow.parentRunId": config.parent_run_id or ""})
    for key, (result, reused) in zip(keys, results, strict=True):
        if reused:
            context.log.info(f"{result.label}: reused the finished run {result.run_key}")
        shown: dict[str, Any] = {k: round(result.metrics[k], 4) for k in SUMMARY if k in result.metrics}
        grid = RunFiles(Path(result.path)).final_grid
        if grid.is_file():
            shown["samples"] = image_markdown(grid.read_bytes(), result.label)
        context.add_asset_metadata({"reused": reused, "run_key": result.run_key, **shown,
                                    "fused_group": result.provenance.get("fused_group", "solo"),
                                    "mlflow_run": mlflow_link(tracker, result.mlflow_run_id),
                                    "it_per_s": round(result.it_per_s, 1)}, partition_key=key)
    records = {key: result for key, (result, _) in zip(keys, results, strict=True)}
    return records if len(keys) > 1 else records[keys[0]]


def _one_study(keys: list[str], parts: list[list[str]]) -> tuple[str, str]:
    studies = {tuple(p[:2]) for p in parts}
    if len(studies) != 1 or any(len(p) != 3 for p in parts):
        raise PipelineError(f"the partitions {keys[0]} … {keys[-1]} are not runs of one study and profile; "
                            "launch the runs of one study (flower-pipeline study run) or one partition")
    name, profile = studies.pop()
    return name, profile


@dg.asset(partitions_def=study_partitions, group_name="study", kinds={"html", "mlflow"}, owners=OWNERS,
          code_version=__version__, ins={"study_run": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def study_report(context: dg.AssetExecutionContext, config: StudyConfig, study_run: Any, storage: FlowerStorage,
                 mlflow: MlflowTracking) -> StudyReport:
    """The study's report: every run in a table, sample grids side by side, each claim with its numbers and a
    verdict. One self-contained HTML page, also logged to MLflow."""
    name, profile = context.partition_key.split(":")
    tracker = mlflow.tracker
    with user_errors(tracker):
        study = _study(config, name)
        records = study_run if isinstance(study_run, dict) else {study_run.partition: study_run}
        path, verdicts, finished = build_report(storage.layout, study, profile, records, tracker.link)
        run_id = config.parent_run_id or tracker.start_run(f"{name}:{profile} report", {"study": name,
                                                                                        "profile": profile})
        tracker.log_artifact(run_id, path)
        if not config.parent_run_id:
            tracker.end_run(run_id)
    claims = "| claim | verdict | numbers |\n|---|---|---|\n" + "\n".join(
        f"| {c.text} | **{verdicts[c.id].status}** | {verdicts[c.id].evidence} |" for c in study.claims)
    context.add_output_metadata({"claims": dg.MetadataValue.md(claims), "runs_finished": finished,
                                 "runs": len(study.runs), "report": dg.MetadataValue.path(str(path)),
                                 "mlflow_run_id": run_id})
    return StudyReport(name, profile, str(path), {k: v.status for k, v in verdicts.items()})


study_job = dg.define_asset_job("study_runs", selection=[study_run],
                                description="Train and evaluate one run of a study (a partition per run).")
study_report_job = dg.define_asset_job("study_reports", selection=[study_report],
                                       description="Build a study's report from its finished runs.")
