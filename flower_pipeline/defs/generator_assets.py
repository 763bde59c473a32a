"""The generator assets, per variant × architecture: trained_generator → generator_evaluation → registered_generator.

Each is a thin face of the one run path in `flower_pipeline.runs`: the asset
reads its partition and config, calls the core, and shows the record in the UI.
"""

import getpass
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import dagster as dg

from flower_pipeline import __version__, metrics
from flower_pipeline.catalog import Variant
from flower_pipeline.environment import WEBSERVER_ENV
from flower_pipeline.evaluation import EvalSettings, scores_in_range
from flower_pipeline.feature_network import FeatureNetworkRef
from flower_pipeline.ingest import TensorCacheRef
from flower_pipeline.metrics import gate_description
from flower_pipeline.registry import RegisteredVersion
from flower_pipeline.runs import (
    PICTURES,
    Evaluation,
    RunRequest,
    TrainedRun,
    best_of,
    evaluate_and_log,
    member_key,
    register,
    seed_sweep,
    sweep_fingerprint,
    train_and_log_group,
)
from flower_pipeline.scaleout.heartbeat import step_key, step_watch
from flower_pipeline.scaleout.settings import GPU_STEP
from flower_pipeline.training import TrainConfig, pick_device

from .config import EvaluationConfig, TrainingConfig, asset_code_version, settings_from
from .data_assets import OWNERS
from .partitions import training_partitions, variant_and_arch
from .resources import FlowerStorage, MlflowTracking, pick
from .support import image_markdown, mlflow_link, rows_table, step_log, table, user_errors

FINAL_SHOWN = ("loss_d", "loss_g", "d_real", "d_fake")  # a training's final log window, as the UI shows it


def dagster_tags(context: dg.AssetExecutionContext) -> dict[str, str]:
    """What an MLflow run records of the Dagster run that made it, with a link back where the UI's address is
    known."""
    run, base = context.run, os.environ.get(WEBSERVER_ENV, "").rstrip("/")
    return {"dagster_run_id": run.run_id, "dagster_job": run.job_name, "mlflow.source.name": f"dagster:{run.job_name}",
            "mlflow.source.type": "JOB", "mlflow.user": getpass.getuser(),
            **({"dagster_run_url": f"{base}/runs/{run.run_id}",  # the description is markdown: a clickable link
                "mlflow.note.content": f"Made by Dagster run [{run.run_id[:8]}]({base}/runs/{run.run_id}) of "
                                       f"`{run.job_name}`."} if base else {})}


def _running(context: dg.AssetExecutionContext, dagster_run_id: str) -> bool:
    """Whether the Dagster run that started an MLflow run of this partition still runs. This run's own
    earlier attempt (its Celery worker was killed and the step handed to another) does not: it is this step."""
    if dagster_run_id == context.run.run_id:
        return False
    run = context.instance.get_run_by_id(dagster_run_id) if dagster_run_id else None
    return run is not None and not run.is_finished


def _earlier_active_run(context: dg.AssetExecutionContext) -> str | None:
    """Another run of this partition that is executing and was created before this one, if any: of two started
    at once, the first goes on and the second refuses (whoever started them)."""
    own = context.instance.get_run_record_by_id(context.run.run_id)
    for record in context.instance.get_run_records(dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
            tags={"dagster/partition": str(context.partition_key)})):
        if record.dagster_run.run_id != context.run.run_id and (
                own is None or (record.create_timestamp, record.storage_id) < (own.create_timestamp, own.storage_id)):
            return record.dagster_run.run_id
    return None


@dg.asset(partitions_def=training_partitions, pool="gpu", group_name="training", kinds={"pytorch", "mlflow"},
          owners=OWNERS, code_version=asset_code_version(TrainConfig), op_tags=GPU_STEP)
def trained_generator(context: dg.AssetExecutionContext, config: TrainingConfig, tensor_cache: TensorCacheRef,
                      storage: FlowerStorage, mlflow: MlflowTracking) -> TrainedRun:
    """A DCGAN generator trained on the variant's tensor cache, with its run in MLflow."""
    variant, arch = variant_and_arch(context.partition_key)
    if earlier := _earlier_active_run(context):  # both would share the partition's one stage record
        raise dg.Failure(description=f"{context.partition_key} is already being trained by run {earlier[:8]}; "
                                     "wait for it to end, or terminate it")
    tracker = mlflow.tracker
    step = step_watch(context.instance, context.run.run_id, step_key(context))
    with user_errors(tracker), step as run_ended:
        # auto precision made concrete for the device: a bf16 training has its own folder, never reused as fp32
        settings = settings_from(config, TrainConfig, arch=arch).on(pick_device(config.device))
        members = seed_sweep(settings, config.seeds)
        dataset, sweep = Variant.parse(variant).dataset, len(members) > 1
        out_dirs = [storage.layout.training(dataset, variant, arch, member_key(tensor_cache.content_hash, m, members))
                    for m in members]
        group_dir = (storage.layout.training(dataset, variant, arch,
                                             sweep_fingerprint(tensor_cache.content_hash, members))
                     if sweep else out_dirs[0])
        ended = tracker.end_orphaned_runs(str(context.partition_key), lambda run_id: _running(context, run_id))
        if ended:
            context.log.warning(f"marked {ended} MLflow run(s) of an earlier, crashed run KILLED")
        tags = {**dagster_tags(context), "dagster_partition": str(context.partition_key)}
        runs = [RunRequest(m, out_dir, f"{variant}-{arch}" + (f"-seed{m.seed}" if sweep else ""), tags,
                           label=f"seed {m.seed}") for m, out_dir in zip(members, out_dirs, strict=True)]
        if sweep:
            context.log.info(f"seed sweep: {len(runs)} seeds trained side by side in one fused step")
        group = train_and_log_group(tracker, tensor_cache, runs, group_dir, device=config.device,
                                    log=step_log(context), stop=run_ended)
    (trained, result), out_dir = group[0], out_dirs[0]
    trained = replace(trained, sweep=tuple(member for member, _ in group[1:]))

    final = result.final
    metadata: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(out_dir)), "mlflow_run": mlflow_link(tracker, trained.mlflow_run_id),
        "device": result.device, "cuda_graph": result.cuda_graph, "iterations": result.iterations,
        "seconds": round(result.seconds, 1),
        "iterations_per_second": round(result.iterations / max(result.seconds, 1e-9), 1),
        **{k: round(final[k], 4) for k in FINAL_SHOWN},
        "cache_hash": tensor_cache.content_hash,
        "samples": image_markdown(result.files["final_grid"].read_bytes(), f"{variant} {arch} samples"),
    }
    if "curves" in result.files:
        metadata["curves"] = image_markdown(result.files["curves"].read_bytes(), "training curves")
    if sweep:  # the top-level numbers and link are the first seed's; the evaluation picks the one registered
        metadata["shown_seed"] = f"seed {members[0].seed} of {len(members)}; every seed in sweep"
        metadata["sweep"] = rows_table([{"seed": m.settings.seed, **{k: round(r.final[k], 4) for k in FINAL_SHOWN}}
                                        for m, (_, r) in zip(runs, group, strict=True)])
    context.add_output_metadata(metadata)
    return trained


@dg.asset(partitions_def=training_partitions, group_name="evaluation", kinds={"pytorch", "mlflow"}, owners=OWNERS,
          code_version=asset_code_version(EvalSettings), pool="gpu", op_tags=GPU_STEP)
def generator_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, trained_generator: TrainedRun,
                         feature_network: FeatureNetworkRef, mlflow: MlflowTracking) -> Evaluation:
    """The trained generator judged on its own tensor cache: D scores, FID/KID, colour collapse, memorization."""
    tracker = mlflow.tracker
    step = step_watch(context.instance, context.run.run_id, step_key(context))  # the slot stays while it runs
    with user_errors(tracker), step:
        settings = settings_from(config, EvalSettings)
        evaluation = best_of([evaluate_and_log(tracker, trained, feature_network, settings,
                                               partition=str(context.partition_key), device=config.device,
                                               log=step_log(context))
                              for trained in (trained_generator, *trained_generator.sweep)])
        if evaluation.sweep:  # which seed of the sweep goes on to the registry, on every member's run
            chosen = f"seed {evaluation.training.config['seed']} of {len(evaluation.sweep) + 1}"
            for member in (evaluation, *evaluation.sweep):
                tracker.set_tags(member.training.mlflow_run_id, {"sweep_choice": chosen})
            context.log.info(f"seed sweep: {chosen} ranked first and goes on to the registry")
    shown = {k: round(v, 4) for k, v in metrics.headline(evaluation.metrics).items()}
    metadata: dict[str, Any] = {
        **shown, "samples_scored": config.samples, "quality_gate": evaluation.gate_reason,
        "mlflow_run": mlflow_link(tracker, evaluation.training.mlflow_run_id),  # the registered seed's run
        "path": dg.MetadataValue.path(os.path.dirname(evaluation.files["metrics"])), "headline": table(shown),
    }
    for key, status in (("fid", "fid_status"), ("fd_flowers", "flowers_status")):
        if key in evaluation.unavailable:
            metadata[status] = f"unavailable: {evaluation.unavailable[key]}"
    if evaluation.sweep:
        metadata["registered_seed"] = evaluation.training.config["seed"]
        metadata["sweep"] = rows_table([{"seed": e.training.config["seed"],
                                         "registered": "yes" if e is evaluation else "", "quality_gate": e.gate_reason,
                                         **{k: round(v, 4) for k, v in metrics.headline(e.metrics).items()}}
                                        for e in (evaluation, *evaluation.sweep)])
    if evaluation.snapshots:  # eval_every: the scored snapshots' curve, and which one goes on to the registry
        metadata["chosen_iteration"] = evaluation.iteration or evaluation.training.iterations
        chosen = next(s for s in evaluation.snapshots if s.iteration == metadata["chosen_iteration"])
        metadata["chosen_snapshot"] = mlflow_link(tracker, logged_model=chosen.model_id)  # its LoggedModel
        metadata["snapshot_scores"] = rows_table([
            {"iteration": s.iteration, "chosen": "yes" if s.iteration == metadata["chosen_iteration"] else "",
             **{k: round(v, 4) for k, v in s.metrics.items()}}
            for s in evaluation.snapshots])
    for name, alt in {**PICTURES, "snapshots": "the scored snapshots' measures, the chosen one marked"}.items():
        if name in evaluation.files:
            with open(evaluation.files[name], "rb") as picture:
                metadata[name] = image_markdown(picture.read(), alt)
    context.add_output_metadata(metadata)
    return evaluation


def _evaluation_check(name: str, description: str, judge: Callable[[Evaluation], tuple[bool, str]],
                      severity: dg.AssetCheckSeverity) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=generator_evaluation, name=name, description=description,
                    partitions_def=generator_evaluation.partitions_def)  # the UI shows which partition it judged
    def evaluation_check(context: dg.AssetCheckExecutionContext, generator_evaluation: Any) -> dg.AssetCheckResult:
        with user_errors():
            passed, reason = judge(pick(generator_evaluation, str(context.partition_key), "partition"))
        return dg.AssetCheckResult(passed=passed, description=reason, severity=severity)

    return evaluation_check


evaluation_checks = [
    _evaluation_check("scores_in_range", "Mean D(x) on training and held-out images and mean D(G(z)), scored as D "
                      "was trained, are finite and strictly between 0 and 1.",
                      lambda evaluation: scores_in_range(evaluation.metrics), dg.AssetCheckSeverity.ERROR),
    _evaluation_check("quality_gate", gate_description(),
                      lambda evaluation: (evaluation.gate_passed, evaluation.gate_reason),
                      dg.AssetCheckSeverity.WARN),
]


@dg.asset(partitions_def=training_partitions, group_name="registry", kinds={"mlflow"}, owners=OWNERS,
          code_version=__version__,
          # A champion older than a week and a day (one missed weekly retraining) shows as late in the UI.
          freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8), warn_window=timedelta(days=7)))
def registered_generator(context: dg.AssetExecutionContext, generator_evaluation: Evaluation,
                         mlflow: MlflowTracking) -> RegisteredVersion:
    """The evaluated generator as a version of `<variant>-<arch>`; `champion` moves only to a better one."""
    tracker = mlflow.tracker
    with user_errors(tracker):
        registered = register(tracker, generator_evaluation, log=context.log.info)
    context.add_output_metadata({
        "model": registered.model, "version": registered.version, "promotion": registered.promotion,
        "reason": registered.reason, "champion_version": registered.champion_version,
        "model_version": mlflow_link(tracker, model=registered.model, version=registered.version),
        "mlflow_run": mlflow_link(tracker, registered.run_id), "tracking_uri": tracker.uri,
    })
    return registered
