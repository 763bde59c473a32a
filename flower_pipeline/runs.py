"""The one path from a tensor cache to a registered generator: train → evaluate → register, and its records.

The Dagster assets (`trained_generator`, `generator_evaluation`,
`registered_generator`), every study run and `study run --register` call these
three functions, so a training logs, an evaluation measures and a version is
tagged the same way whoever started it. Each step returns a small frozen record
(paths, hashes, numbers) that the next step takes.

    (trained, result), = train_and_log_group(tracker, cache_ref, [RunRequest(settings, out_dir, name, tags)], out_dir)
    evaluation = evaluate_and_log(tracker, trained, network_ref, EvalSettings(), partition="arch1|…")
    registered = register(tracker, evaluation)
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flower_pipeline import source_version
from flower_pipeline.effnet import EFFNET_ID, Effnet
from flower_pipeline.errors import PipelineError
from flower_pipeline.evaluation import EvalResult, EvalSettings, evaluate, inception_for, quality_gate
from flower_pipeline.feature_network import FeatureNetworkRef, flower_features, frechet_distance, load_feature_network
from flower_pipeline.ingest import TensorCacheRef
from flower_pipeline.layout import DataLayout, RunFiles
from flower_pipeline.metrics import EFFNET_SPACE, FEATURE_NETWORK, run_metrics, summary_line, version_tags
from flower_pipeline.plots import snapshot_curve_png
from flower_pipeline.registry import RegisteredVersion, model_name, ranking_metric, register_generator
from flower_pipeline.storage import DataPath, atomic_write_bytes
from flower_pipeline.tensor_cache import TensorCache
from flower_pipeline.tracking import MLFLOW_FAILURES, InBackground, MlflowTracker, Tracker
from flower_pipeline.training import (
    DEFAULT_DEVICE,
    TrainConfig,
    TrainResult,
    autocast,
    deterministic,
    load_generator_file,
    pick_device,
    precision_for,
    provenance,
    train_fused,
)

LogFn = Callable[[str], None]
# An evaluation's pictures and what each shows: logged to MLflow's image viewer and shown in the Dagster UI.
PICTURES = {"samples": "generated samples", "timeline": "fixed-noise samples during training",
            "nearest_pairs": "closest samples (top) and their nearest training images",
            "colours": "dominant colours: real (top) vs generated",
            "mode": "the samples' most repeated mode (two rows) above photos of that feature cluster"}


@dataclass(frozen=True)
class TrainedRun:
    variant: str
    arch: str
    path: DataPath  # generator.pt, final_state.pt, samples/ …
    mlflow_run_id: str
    cache: TensorCacheRef  # the cache it was trained on: evaluation judges against exactly this one
    config: dict[str, Any]
    device: str
    iterations: int
    seconds: float
    sweep: tuple[TrainedRun, ...] = ()  # the other seeds of a seed sweep, trained beside this one


@dataclass(frozen=True)
class ScoredSnapshot:
    """A generator kept during training (eval_every), scored on SNAPSHOT_SAMPLES samples in both feature spaces."""

    iteration: int
    metrics: dict[str, float]  # fd_flowers, fd_effnet: those measured
    model_id: str  # its MLflow LoggedModel


@dataclass(frozen=True)
class Evaluation:
    partition: str  # the training partition, arch1|flowers17-color-64
    training: TrainedRun
    feature_network: str  # the id of the feature network fd_flowers etc. were measured with
    metrics: dict[str, float]
    unavailable: dict[str, str]  # metric → why it was not measured
    gate_passed: bool
    gate_reason: str
    files: dict[str, DataPath]
    sweep: tuple[Evaluation, ...] = ()  # a seed sweep's other members, which this one ranked above
    snapshots: tuple[ScoredSnapshot, ...] = ()  # the scored snapshots and the final generator, by iteration
    iteration: int | None = None  # the snapshot evaluated and registered (None: the final generator)
    scoring_seconds: float = 0.0  # what scoring the snapshots cost, to set beside the training's seconds


def training_fingerprint(cache_hash: str, settings: TrainConfig) -> str:
    """A training's identity: cache content and settings, so a retry resumes its own checkpoint."""
    return hashlib.sha256(json.dumps([cache_hash, settings.identity()], sort_keys=True).encode()).hexdigest()[:12]


MAX_SEEDS = 64  # members one sweep trains side by side (64 px arch1 at batch 16: ~2 GB on a GPU)


def member_key(cache_hash: str, member: TrainConfig, members: Sequence[TrainConfig]) -> str:
    """A training's folder name: its identity, and for a member of a sweep the sweep's too. Trained beside
    others it is another run (another reduction order acts as another seed), so it never shares the folder of
    the same settings trained alone."""
    own = training_fingerprint(cache_hash, member)
    return own if len(members) == 1 else f"{own}-in-{sweep_fingerprint(cache_hash, members).removeprefix('fused+')}"


def seed_sweep(settings: TrainConfig, seeds: Sequence[int]) -> list[TrainConfig]:
    """The settings once per seed of a sweep, trained side by side; no seeds: the settings' own seed alone."""
    if len(seeds) > MAX_SEEDS:
        raise PipelineError(f"{len(seeds)} seeds: a sweep trains at most {MAX_SEEDS} side by side")
    if len(set(seeds)) < len(seeds):
        raise PipelineError(f"seeds repeat: {', '.join(map(str, seeds))}")
    return [replace(settings, seed=seed).resolved() for seed in seeds] or [settings]


def sweep_fingerprint(cache_hash: str, members: Sequence[TrainConfig]) -> str:
    """A sweep's group folder name: its members' identities ('+' names no single training's folder)."""
    return "fused+" + hashlib.sha256(" ".join(training_fingerprint(cache_hash, m) for m in members)
                                     .encode()).hexdigest()[:12]


def sweep_metric(evaluations: Sequence[Evaluation]) -> str:
    """What ranks a sweep's members: the registry's ranking metric that all of them have."""
    return ranking_metric(*({**e.metrics, FEATURE_NETWORK: e.feature_network, EFFNET_SPACE: EFFNET_ID}
                            for e in evaluations))


def best_of(evaluations: Sequence[Evaluation]) -> Evaluation:
    """The sweep member the registry would rank first: one that passed the gate, then the lowest ranking
    metric (as a champion is chosen); the others ride along in `sweep`."""
    metric = sweep_metric(evaluations)
    best = min(evaluations, key=lambda e: (not e.gate_passed, e.metrics.get(metric, math.inf)))
    return replace(best, sweep=tuple(e for e in evaluations if e is not best))


def progress_line(record: dict[str, float], iterations: int) -> str:
    ada = f" ADA p {record['augment_p']:.2f}" if "augment_p" in record else ""
    return (f"iter {int(record['iteration'])}/{iterations} {record['it_per_s']:.1f} it/s loss D {record['loss_d']:.3f} "
            f"G {record['loss_g']:.3f} D(x) {record['d_real']:.3f} D(G(z)) {record['d_fake']:.3f}{ada} "
            f"ETA {record['eta_s']:.0f} s")


@dataclass(frozen=True)
class RunRequest:
    """One run of a training group: its settings, folder, MLflow run name, tags, extra params and snapshots."""

    settings: TrainConfig
    out_dir: Path
    name: str
    tags: dict[str, str]
    params: dict[str, Any] | None = None
    snapshots: tuple[int, ...] = ()
    label: str = ""  # how the log names it when it trains beside others


def group_labels(runs: list[RunRequest]) -> tuple[str, ...]:
    """The names of a fused group's members, in training order: part of each member's provenance."""
    return tuple(run.label or run.name for run in runs)


def train_and_log_group(tracker: Tracker, cache_ref: TensorCacheRef, runs: list[RunRequest], group_dir: Path, *,
                        device: str = DEFAULT_DEVICE, log: LogFn = print,
                        stop: threading.Event | None = None) -> list[tuple[TrainedRun, TrainResult]]:
    """Train K runs of one bucket side by side (one run: a solo training), each its own tracked run with
    params, metrics, sample grids and artifacts, exactly as a solo run. A failed training's runs are marked
    FAILED, except when the tracker itself failed. Setting `stop` ends the training (its run ended elsewhere)."""
    torch_device = pick_device(device)
    settings = [run.settings.on(torch_device) for run in runs]  # auto precision made concrete for the device
    cache = TensorCache.load(cache_ref.path)
    origin = {f"provenance.{k}": v
              for k, v in provenance(torch_device, group_labels(runs), settings[0].precision).items()}
    run_ids: list[str] = []
    try:
        for run, config in zip(runs, settings, strict=True):
            run_id = tracker.start_run(run.name, {**run.tags, "variant": cache_ref.variant, "arch": config.arch,
                                                  "cache_hash": cache_ref.content_hash, **origin,
                                                  **({"fused_with": str(len(runs) - 1)} if len(runs) > 1 else {})})
            run_ids.append(run_id)
            tracker.log_dataset(run_id, cache_ref.variant, cache_ref.content_hash, cache_ref.path)
            tracker.log_params(run_id, {**asdict(config), "variant": cache_ref.variant, "device": device,
                                        "cache_hash": cache_ref.content_hash,
                                        "train_images": int((~cache.holdout).sum()), **(run.params or {})})
        prefixes = [f"{run.label}: " if run.label and len(runs) > 1 else "" for run in runs]
        background = InBackground()  # the MLflow server down for a while: training goes on

        def log_record(k: int, record: dict[str, float]) -> None:
            metrics = {key: v for key, v in record.items() if key != "iteration"}
            background.call(tracker.log_metrics, run_ids[k], metrics, int(record["iteration"]))

        def on_log(k: int, record: dict[str, float]) -> None:
            log(prefixes[k] + progress_line(record, settings[k].iterations))
            log_record(k, record)

        def on_resume(iteration: int, histories: list[list[dict[str, float]]]) -> None:
            log(f"resumed from iteration {iteration} of a checkpoint")
            for k, history in enumerate(histories):  # this attempt's tracked run gets the earlier metrics too
                for record in history:
                    log_record(k, record)

        def track(results: list[TrainResult]) -> None:
            """Before the final checkpoint goes: if MLflow fails here, a retry resumes at the end."""
            background.flush()  # every metric in MLflow, or MLflow's failure once out of time
            for run_id, run, result in zip(run_ids, runs, results, strict=True):
                for file in ("final_grid", "curves", "history", "generator"):
                    if file in result.files:
                        tracker.log_artifact(run_id, result.files[file])
                tracker.log_artifact(run_id, RunFiles(run.out_dir).samples, "samples")
                tracker.set_tags(run_id, {"device": result.device, "cuda_graph": result.cuda_graph})

        try:
            results = train_fused(settings, cache, [run.out_dir for run in runs], group_dir, device=device,
                                  snapshots=tuple(run.snapshots for run in runs), on_log=on_log,
                                  on_sample=lambda k, it, png: background.call(tracker.log_image, run_ids[k], png,
                                                                               "samples", it),
                                  on_resume=on_resume, on_trained=track, stop=stop,
                                  labels=tuple(run.label or run.name for run in runs))
        except BaseException:
            background.close()  # training failed: nothing waits for the queue
            raise
    except BaseException as err:
        if not isinstance(err, MLFLOW_FAILURES):  # with the tracker down, the next training marks this run KILLED
            for run_id in run_ids:
                # An error fails the run; an interruption (Ctrl-C, a terminated run: not an Exception) kills it.
                tracker.end_run(run_id, "FAILED" if isinstance(err, Exception) else "KILLED")
        raise
    trained = []
    for run_id, run, config, result in zip(run_ids, runs, settings, results, strict=True):
        tracker.end_run(run_id)
        trained.append((TrainedRun(cache_ref.variant, config.arch, str(run.out_dir), run_id, cache_ref,
                                   asdict(config), result.device, result.iterations, result.seconds), result))
    return trained


@dataclass
class FeatureSpaces:
    """The feature networks a generator is judged in, loaded once, each with why it is missing if it is."""

    cache: TensorCache
    device: torch.device
    precision: str
    flowers: Callable[[Any], Any] | None
    no_flowers: str
    effnet: Effnet | None
    no_effnet: str

    @property
    def effnet_reference(self) -> Path:
        return DataLayout.reference_features(self.cache.path, EFFNET_ID + ("-bf16" if self.precision == "bf16" else ""))


def feature_spaces(trained: TrainedRun, network: FeatureNetworkRef, settings: EvalSettings, device: str,
                   log: LogFn) -> FeatureSpaces:
    """The variant's feature network (when it learned from the cache this run trained on) and EfficientNet."""
    cache = TensorCache.load(trained.cache.path)  # the images it was trained on, not a newer cache
    torch_device = pick_device(device)
    precision = precision_for(settings.precision, torch_device)
    same_cache = network.network_id.startswith(trained.cache.content_hash[:16])
    if network.path is not None and same_cache:
        net = load_feature_network(Path(network.path), torch_device)
        flowers, no_flowers = in_precision(partial(flower_features, net, device=torch_device), torch_device,
                                           precision), ""
    else:
        flowers, no_flowers = None, network.unavailable or (
            f"the feature network was trained on another cache ({network.network_id}); prepare "
            f"{trained.variant} again")
    try:
        effnet, no_effnet = Effnet(torch_device, precision), ""
    except PipelineError as err:
        effnet, no_effnet = None, str(err)
        log(f"fd_effnet and the rest unavailable: {err}")
    return FeatureSpaces(cache, torch_device, precision, flowers, no_flowers, effnet, no_effnet)


def measure(trained: TrainedRun, network: FeatureNetworkRef, settings: EvalSettings, *, device: str = DEFAULT_DEVICE,
            iteration: int | None = None, log: LogFn = print) -> EvalResult:
    """The trained generator (or its snapshot at `iteration`) judged against the cache it was trained on."""
    spaces = feature_spaces(trained, network, settings, device, log)
    inception, no_inception = inception_for(settings, spaces.device)
    inception = in_precision(inception, spaces.device, spaces.precision)
    if inception is None:
        log(f"FID and KID unavailable: {no_inception}")
    with deterministic(spaces.device):  # a measure that does not depend on the machine's thread count
        return evaluate(Path(trained.path), spaces.cache, settings, device=spaces.device, inception=inception,
                        no_inception_reason=no_inception, flowers=spaces.flowers, no_flowers_reason=spaces.no_flowers,
                        effnet=spaces.effnet, no_effnet_reason=spaces.no_effnet,
                        effnet_reference=spaces.effnet_reference, iteration=iteration)


SNAPSHOT_SAMPLES = 256  # a scored snapshot's samples, one seed for all: enough to rank them, cheap beside training


def snapshot_ranking(snapshots: Sequence[ScoredSnapshot], network_id: str) -> str | None:
    """What ranks scored snapshots: the registry's ranking metric, among those every snapshot has (None: none)."""
    spaces = {FEATURE_NETWORK: network_id, EFFNET_SPACE: EFFNET_ID}
    metric = ranking_metric(*({**s.metrics, **spaces} for s in snapshots))
    return metric if metric in snapshots[0].metrics else None


def score_snapshots(tracker: Tracker, trained: TrainedRun, network: FeatureNetworkRef, settings: EvalSettings, *,
                    device: str = DEFAULT_DEVICE, log: LogFn = print) -> tuple[tuple[ScoredSnapshot, ...], int | None]:
    """Each snapshot kept for scoring (eval_every) and the final generator, scored in both feature spaces and
    logged as an MLflow LoggedModel of the training's run; and the snapshot the registry's ranking puts first
    (None: the final generator, or nothing to rank with)."""
    config = TrainConfig(**trained.config)
    if not config.scored_snapshots():
        return (), None
    spaces = feature_spaces(trained, network, settings, device, log)
    real = np.asarray(spaces.cache.images)
    judges: dict[str, tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]] = {}
    with deterministic(spaces.device):
        if spaces.flowers is not None:
            judges["fd_flowers"] = (spaces.flowers, spaces.flowers(real))
        if spaces.effnet is not None:
            effnet = spaces.effnet
            judges["fd_effnet"] = (lambda images: effnet.features(images).stage5,
                                   effnet.reference(real, spaces.effnet_reference).stage5)
        run, scored = RunFiles(Path(trained.path)), []
        for iteration in (*config.scored_snapshots(), trained.iterations):
            file = run.snapshot(iteration) if iteration < trained.iterations else run.generator
            generator, _, _ = load_generator_file(file, spaces.device)
            samples = generator.generate(min(SNAPSHOT_SAMPLES, settings.samples), seed=settings.seed)
            metrics = {}
            for name, (features, reference) in list(judges.items()):
                try:
                    metrics[name] = frechet_distance(reference, features(samples), name)
                except PipelineError as err:  # too few samples for the space: the same for every snapshot
                    log(f"snapshots not scored in {name}: {err}")
                    del judges[name]
            model_id = tracker.log_snapshot(trained.mlflow_run_id, iteration, file, metrics)
            scored.append(ScoredSnapshot(iteration, metrics, model_id))
            log(f"snapshot {iteration}/{trained.iterations}: "
                + (", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no feature space to score in"))
    metric = snapshot_ranking(scored, network.network_id)
    if metric is None:
        log("snapshots not ranked: neither feature space is available; the final generator is evaluated")
        return tuple(scored), None
    best = min(scored, key=lambda s: (s.metrics[metric], -s.iteration))  # a tie goes to the longer training
    log(f"best snapshot by {metric}: iteration {best.iteration} of {trained.iterations}")
    return tuple(scored), None if best.iteration == trained.iterations else best.iteration


def in_precision(features: Callable[[Any], Any] | None, device: torch.device,
                 precision: str) -> Callable[[Any], Any] | None:
    """A feature network's calls in bf16 autocast when `precision` is bf16 (its outputs are read as fp64)."""
    if features is None or precision != "bf16":
        return features

    def cast(images: Any) -> Any:
        with autocast(device, precision):
            return features(images)

    return cast


def evaluate_and_log(tracker: Tracker, trained: TrainedRun, network: FeatureNetworkRef, settings: EvalSettings, *,
                     partition: str, device: str = DEFAULT_DEVICE, log: LogFn = print) -> Evaluation:
    """Measure the trained generator (with eval_every: its best scored snapshot), apply the quality gate and log
    everything to its training's run. The tracker comes before the record: an evaluation whose logging failed
    is never registered."""
    started = time.perf_counter()
    snapshots, iteration = score_snapshots(tracker, trained, network, settings, device=device, log=log)
    scoring_seconds = time.perf_counter() - started
    if snapshots:
        log(f"{len(snapshots)} snapshots scored in {scoring_seconds:.1f} s ({trained.seconds:.1f} s of training)")
    result = measure(trained, network, settings, device=device, iteration=iteration, log=log)
    gate_passed, gate_reason = quality_gate(result.metrics, settings)
    log(f"quality gate {gate_reason}")
    run_id, step = trained.mlflow_run_id, iteration or trained.iterations
    tracker.log_metrics(run_id, run_metrics(result.metrics), step)
    tracker.log_artifact(run_id, result.files["metrics"].parent, "evaluation")
    for picture in PICTURES:
        if picture in result.files:
            tracker.log_image(run_id, result.files[picture], f"evaluation_{picture}", step)
    files = {k: str(v) for k, v in result.files.items()}
    if snapshots:
        curve = snapshot_curve_png([(s.iteration, s.metrics) for s in snapshots], iteration or trained.iterations,
                                   snapshot_ranking(snapshots, network.network_id),
                                   title=f"{trained.arch} on {trained.variant}: scored snapshots")
        if curve is not None:
            files["snapshots"] = str(atomic_write_bytes(RunFiles(Path(trained.path)).snapshot_curve, curve))
            tracker.log_artifact(run_id, Path(files["snapshots"]))
    tracker.set_tags(run_id, {"quality_gate": gate_reason,
                              "evaluation_precision": precision_for(settings.precision, pick_device(device)),
                              **({"chosen_snapshot": step} if snapshots else {}),
                              **{f"unavailable_{k}": v for k, v in result.unavailable.items()}})
    return Evaluation(partition, trained, network.network_id, result.metrics, result.unavailable, gate_passed,
                      gate_reason, files, snapshots=snapshots, iteration=iteration, scoring_seconds=scoring_seconds)


def register(tracker: MlflowTracker, evaluation: Evaluation, *, tags: dict[str, str] | None = None,
             log: LogFn = print) -> RegisteredVersion:
    """The evaluated generator as a new version of `<variant>-<arch>` (once per run, however often retried);
    `champion` moves to it only when it passed the gate and beats the champion."""
    training, metrics = evaluation.training, evaluation.metrics
    code = source_version()
    spaces = {FEATURE_NETWORK: evaluation.feature_network, EFFNET_SPACE: EFFNET_ID}
    iteration = evaluation.iteration or training.iterations
    version_info = {
        "variant": training.variant, "arch": training.arch, "cache_hash": training.cache.content_hash,
        "config": json.dumps(training.config, sort_keys=True), "code_version": code,
        "iterations": str(training.iterations), "snapshot_iteration": str(iteration),
        "quality_gate": evaluation.gate_reason,
        **spaces, **version_tags(metrics), **(tags or {}),
    }
    missing = sorted({f"{'FID and KID' if k in ('fid', 'kid_mean') else 'fd_flowers and the rest'} unavailable: "
                      f"{why}" for k, why in evaluation.unavailable.items() if k in ("fid", "fd_flowers")})
    chosen = (f", its snapshot at iteration {iteration} (the best of {len(evaluation.snapshots)} scored)"
              if evaluation.snapshots else "")
    description = (f"{training.arch} generator trained {training.iterations} iterations on {training.variant}{chosen} "
                   f"(cache {training.cache.content_hash[:12]}, code {code}). {summary_line(metrics)}."
                   + "".join(f" {m}." for m in missing))  # each reason once
    return register_generator(
        tracker, model_name(training.variant, training.arch), training.mlflow_run_id,
        RunFiles(Path(training.path)).generator if evaluation.iteration is None
        else RunFiles(Path(training.path)).snapshot(evaluation.iteration),
        gate=(evaluation.gate_passed, evaluation.gate_reason), metrics=metrics,
        spaces=spaces, tags=version_info, description=description, log=log)
