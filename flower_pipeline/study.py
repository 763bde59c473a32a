"""A study as data: runs grouped under the claims they test, profiles that size them, verdicts and a report.

    study = load_study("source")                       # flower_pipeline/studies/source.yaml, or a path
    plan = study.plan("quick")                         # every run, resolved: variant, settings, snapshots
    verdicts = judge(study, results, "quick")          # each claim: supported, not supported, inconclusive, …
    html = report_html(study, "quick", reports, verdicts)  # study_report.py

A run's key hashes everything that shapes its result (variant, architecture,
settings, evaluation settings, the tensor cache's content and the code
version), so a finished run is reused only when all of them match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from flower_pipeline import source_version
from flower_pipeline.catalog import Variant
from flower_pipeline.errors import PipelineError
from flower_pipeline.evaluation import EvalSettings
from flower_pipeline.feature_network import FeatureNetworkRef
from flower_pipeline.ingest import TensorCacheRef
from flower_pipeline.layout import DataLayout, RunFiles, path_part
from flower_pipeline.models import ARCHITECTURES
from flower_pipeline.runs import (
    Evaluation,
    RunRequest,
    TrainedRun,
    evaluate_and_log,
    group_labels,
    measure,
    train_and_log_group,
)
from flower_pipeline.settings import read_settings_file
from flower_pipeline.storage import (
    DataPath,
    atomic_write_bytes,
    atomic_write_json,
    decode_record,
    encode_record,
    read_json,
)
from flower_pipeline.study_report import RunReport, findings, report_html
from flower_pipeline.tracking import Tracker
from flower_pipeline.training import (
    DEFAULT_DEVICE,
    FULL_ITERATIONS,
    TrainConfig,
    TrainResult,
    deterministic,
    fusion_bucket,
    pick_device,
    precision_for,
    provenance,
)
from flower_pipeline.verdicts import (
    NOT_MEASURED,
    RULES,
    SEED_MARK,
    SNAPSHOT_MARK,
    Metrics,
    NotMeasured,
    Verdict,
    base_label,
    judged,
)

STUDIES_DIR = Path(__file__).parent / "studies"


@dataclass(frozen=True)
class Profile:
    name: str
    size: int
    iterations: int
    settings: dict[str, Any] = field(default_factory=dict)  # training overrides for every run
    evaluation: dict[str, Any] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()  # the datasets it trains on (empty: all); other runs' claims are not measured
    note: str = ""
    seeds: int = 1  # every run trained with this many seeds (seed, seed + 1, …): verdicts need their spread
    machinery_check: bool = False  # its verdicts prove the machinery, they are no findings (a short CPU profile)

    def trains(self, run: RunSpec) -> bool:
        return not self.datasets or run.dataset in self.datasets


@dataclass(frozen=True)
class RunSpec:
    label: str
    variant: str  # dataset-mode; the profile adds the size
    arch: str
    settings: dict[str, Any]
    snapshots: tuple[int, ...]
    claim: str
    note: str = ""  # e.g. a setting that is the project's choice where the source gave none

    @property
    def dataset(self) -> str:
        return self.variant.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    runs: tuple[str, ...]  # labels it reads, its own and those it uses
    own: bool = False  # the project's own claim, not the source's
    source: str = ""  # the source's finding in the project brief's words, where the brief states it

    def labels(self, planned: dict[str, PlannedRun]) -> list[str]:
        """Every seed's label of the runs it reads."""
        return [label for label, run in planned.items() if run.base in self.runs]


@dataclass(frozen=True)
class PlannedRun:
    """A run resolved for a profile: what to train, on which variant, what to evaluate."""

    label: str  # the run's label, with +s<k> for its seed k > 0 (arch1-sgd+s2)
    variant: str  # e.g. flowers17-color-32
    arch: str
    config: dict[str, Any]  # TrainConfig fields
    evaluation: dict[str, Any]  # EvalSettings fields
    snapshots: tuple[int, ...]
    changes: dict[str, Any]  # what the study file changes, for the table
    base: str = ""  # the run's label without its seed mark
    seed: int = 0
    note: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    profiles: dict[str, Profile]
    runs: dict[str, RunSpec]
    claims: tuple[Claim, ...]
    path: str

    def plan(self, profile: str, only: tuple[str, ...] = ()) -> list[PlannedRun]:
        if profile not in self.profiles:
            raise PipelineError(f"study {self.name} has no profile {profile!r}; profiles: "
                                f"{', '.join(self.profiles)}")
        chosen = self.profiles[profile]
        planned = [_resolve(spec, chosen, k) for spec in self.runs.values() for k in range(chosen.seeds)
                   if chosen.trains(spec)]
        unknown = [label for label in only if label not in self.runs and label not in {p.label for p in planned}]
        if unknown:
            raise PipelineError(f"study {self.name} has no run {unknown[0]!r}; runs: {', '.join(self.runs)}")
        return [run for run in planned if not only or run.base in only or run.label in only]


def _resolve(spec: RunSpec, profile: Profile, seed_index: int = 0) -> PlannedRun:
    dataset, mode = spec.variant.rsplit("-", 1)
    variant = Variant(dataset, mode, profile.size).name
    scale = profile.iterations / FULL_ITERATIONS
    iterations = max(1, round(spec.settings.get("iterations", FULL_ITERATIONS) * scale))
    config = {**profile.settings, **spec.settings, "arch": spec.arch, "iterations": iterations}
    config["seed"] = config.get("seed", 0) + seed_index
    snapshots = tuple(max(1, round(s * scale)) for s in spec.snapshots)
    label = spec.label + (f"{SEED_MARK}{seed_index}" if seed_index else "")
    return PlannedRun(label, variant, spec.arch, config, dict(profile.evaluation), snapshots, dict(spec.settings),
                      spec.label, seed_index, spec.note)


def run_key(run: PlannedRun, cache_hash: str, code: str, group: tuple[str, ...] = (),
            device: torch.device | str = "cpu") -> str:
    """What shapes a run's result: a changed setting, cache or code version makes a new key, and so does another
    fused group (the runs it trains beside change its reduction order, which acts as another seed) and another
    precision (`auto` is made concrete for the device)."""
    evaluation = asdict(EvalSettings(**run.evaluation))
    evaluation["precision"] = precision_for(evaluation["precision"], device)
    if evaluation["precision"] == "fp32":  # as before it was a setting: earlier runs' keys stay theirs
        del evaluation["precision"]
    payload = {"variant": run.variant, "config": TrainConfig(**run.config).on(device).identity(),
               "evaluation": evaluation, "snapshots": run.snapshots,
               "cache": cache_hash, "code": code, **({"group": list(group)} if len(group) > 1 else {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def available_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def load_study(name_or_path: str) -> Study:
    """A study by name (flower_pipeline/studies/<name>.yaml) or path, checked: every mistake is one line."""

    path = Path(name_or_path)
    if not path.suffix:
        path = STUDIES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise PipelineError(f"unknown study {name_or_path!r}; studies: {', '.join(available_studies())}")
    data = read_settings_file(path, "study file")
    if not isinstance(data, dict):
        raise PipelineError(f"{path} is not a study file (a mapping with name, profiles and claims)")
    where = f"study file {path.name}"
    try:
        return _parse(data, path, where)
    except (AttributeError, TypeError, ValueError) as err:  # a list where a mapping belongs, text for a number
        raise PipelineError(f"{where} is malformed ({type(err).__name__}: {err}); see "
                            "flower_pipeline/studies/source.yaml for the layout") from None


def _parse(data: dict[str, Any], path: Path, where: str) -> Study:
    _known(data, STUDY_KEYS, where, "key")
    profiles = {name: _profile(name, spec or {}, where) for name, spec in (data.get("profiles") or {}).items()}
    if not profiles:
        raise PipelineError(f"{where} has no profiles")
    runs: dict[str, RunSpec] = {}
    claims = []
    for claim in data.get("claims") or []:
        claim_id = str(claim.get("id", ""))
        _known(claim, CLAIM_KEYS, f"{where}, claim {claim_id}", "key")
        own = []
        for spec in claim.get("runs") or []:
            run = _run(spec, claim_id, where)
            if run.label in runs:
                raise PipelineError(f"{where}: the label {run.label!r} is used twice")
            runs[run.label] = run
            own.append(run.label)
        claims.append(Claim(claim_id, str(claim.get("text", "")), (*own, *map(str, claim.get("uses") or [])),
                            bool(claim.get("own", False)), str(claim.get("source", ""))))
    for claim in claims:
        missing = [label for label in claim.runs if label not in runs]
        if missing:
            raise PipelineError(f"{where}: claim {claim.id!r} uses an unknown run {missing[0]!r}")
    return Study(_name(str(data.get("name", path.stem)), f"{where}: study name"), str(data.get("title", "")),
                 profiles, runs, tuple(claims),
                 str(path))


TRAIN_SETTINGS = {f.name for f in fields(TrainConfig)} - {"arch"}
EVAL_SETTINGS = {f.name for f in fields(EvalSettings)}


def _profile(name: str, spec: dict[str, Any], where: str) -> Profile:
    _known(spec, PROFILE_KEYS, f"{where}, profile {name}", "key")
    settings, evaluation = dict(spec.get("settings") or {}), dict(spec.get("evaluation") or {})
    _known(settings, TRAIN_SETTINGS, f"{where}, profile {name}")
    _known(evaluation, EVAL_SETTINGS, f"{where}, profile {name}, evaluation")
    profile = Profile(name, int(spec.get("size", 64)), int(spec.get("iterations", FULL_ITERATIONS)), settings,
                      evaluation, tuple(spec.get("datasets") or ()), str(spec.get("note", "")),
                      int(spec.get("seeds", 1)), bool(spec.get("machinery_check", False)))
    try:
        TrainConfig(iterations=profile.iterations)  # the range every training's iterations has
    except PipelineError as err:
        raise PipelineError(f"{where}, profile {name}: {err}") from None
    if not 1 <= profile.seeds <= 16:
        raise PipelineError(f"{where}, profile {name}: seeds must be between 1 and 16, got {profile.seeds}")
    Variant("synthetic", "color", profile.size)  # checks the size
    return profile


def _run(spec: dict[str, Any], claim: str, where: str) -> RunSpec:
    _known(spec, RUN_KEYS, f"{where}, a run of claim {claim}", "key")
    label = str(spec.get("label", ""))
    if not label:
        raise PipelineError(f"{where}: a run of claim {claim!r} has no label")
    _name(label, f"{where}: run label")
    settings = dict(spec.get("settings") or {})
    _known(settings, TRAIN_SETTINGS, f"{where}, run {label}")
    variant, arch = str(spec.get("variant", "")), str(spec.get("arch", ""))
    if arch not in ARCHITECTURES:
        raise PipelineError(f"{where}, run {label}: unknown architecture {arch!r}; choose one of "
                            f"{', '.join(ARCHITECTURES)}")
    try:
        dataset, mode = variant.rsplit("-", 1)
        Variant(dataset, mode, 64)
    except (ValueError, PipelineError) as err:
        reason = err if isinstance(err, PipelineError) else "expected <dataset>-<color|gray>, e.g. flowers17-gray"
        raise PipelineError(f"{where}, run {label}: bad variant {variant!r}: {reason}") from None
    try:
        TrainConfig(**{k: v for k, v in settings.items()}, arch=arch).resolved()
    except (TypeError, PipelineError) as err:
        raise PipelineError(f"{where}, run {label}: {err}") from None
    return RunSpec(label, variant, arch, settings, tuple(int(s) for s in spec.get("snapshots") or ()), claim,
                   str(spec.get("note", "")))


RESERVED = ":|@+"  # ':' and '|' separate partition keys, '+s' marks a seed, '@' a snapshot


def _name(name: str, what: str) -> str:
    """A study name or run label, which becomes a folder and part of a partition key: checked before any run."""
    path_part(name, what)
    if set(name) & set(RESERVED):
        raise PipelineError(f"{what} {name!r} may not contain any of {RESERVED!r} (they separate partition keys and "
                            "mark seeds and snapshots)")
    return name


def _known(settings: dict[str, Any], known: set[str], where: str, kind: str = "setting") -> None:
    """A misspelt key is an error naming it and the allowed ones, never silently dropped."""
    if not isinstance(settings, dict):
        raise PipelineError(f"{where}: expected a mapping of {kind}s, got {type(settings).__name__}")
    unknown = sorted(map(str, set(settings) - known))
    if unknown:
        raise PipelineError(f"{where}: unknown {kind} {unknown[0]!r}; {kind}s: {', '.join(sorted(known))}")


STUDY_KEYS = {"name", "title", "profiles", "claims"}
PROFILE_KEYS = {"size", "iterations", "settings", "evaluation", "datasets", "note", "seeds", "machinery_check"}
CLAIM_KEYS = {"id", "text", "runs", "uses", "own", "source"}
RUN_KEYS = {"label", "variant", "arch", "settings", "snapshots", "note"}


# --- verdicts ---------------------------------------------------------------------------------------------------


def judge(study: Study, results: Metrics, profile: str) -> dict[str, Verdict]:
    """Each claim's verdict from its runs' metrics over seeds (see flower_pipeline.verdicts). A claim is not
    measured when a run is missing, a number is unavailable, or the profile does not train a run's dataset."""
    chosen = study.profiles[profile]
    planned = {run.label: run for run in study.plan(profile)}
    verdicts = {}
    for claim in study.claims:
        rule = RULES.get(claim.id)
        missing = sorted({base_label(label) for label in claim.labels(planned) if label not in results})
        untrained = sorted({study.runs[label].dataset for label in claim.runs if not chosen.trains(study.runs[label])})
        if rule is None:
            verdicts[claim.id] = Verdict(NOT_MEASURED, "no rule computes this claim's verdict")
        elif untrained:
            verdicts[claim.id] = Verdict(NOT_MEASURED, f"the {profile} profile does not train on "
                                                       f"{', '.join(untrained)}")
        elif missing:
            verdicts[claim.id] = Verdict(NOT_MEASURED, f"runs not finished: {', '.join(missing)}")
        else:
            try:
                verdicts[claim.id] = judged(rule, results)
            except NotMeasured as missing_number:
                verdicts[claim.id] = Verdict(NOT_MEASURED, str(missing_number))
    return verdicts


# --- running one study run -------------------------------------------------------------------------------------


def study_run_key(study: str, profile: str, label: str) -> str:
    """The partition key of one study run: `<study>:<profile>:<label>` (e.g. `source:quick:arch2-batch8`)."""
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
    path: DataPath
    metrics: dict[str, float]
    snapshot_metrics: dict[str, float]  # the same measures for the generator kept at `snapshot`
    snapshot: int | None
    unavailable: dict[str, str]
    it_per_s: float
    seconds: float
    mlflow_run_id: str
    evaluation: Evaluation | None = None  # what registration takes (None in records of earlier versions)
    provenance: dict[str, str] = field(default_factory=dict)  # training.provenance ({} in earlier records)


@dataclass(frozen=True)
class StudyReport:
    study: str
    profile: str
    path: DataPath  # report.html
    verdicts: dict[str, str]


# The most runs one fused group holds: a larger bucket is split into near-equal groups, so that on a CPU (where
# fusing gains nothing: docs/benchmarks.md) the groups can share the cores; on a GPU 12 runs still fill it.
MAX_FUSED = 12


def fusion_groups(study: Study, profile: str, fuse: bool = True) -> dict[str, tuple[str, ...]]:
    """Each run's fused group (labels, in plan order): the profile's runs with the same variant and the same
    shared settings (`training.fusion_bucket`); unfused, each run alone. A pure function of the study and the
    profile, never of what is finished or selected, so a run's group (and so its key) is always the same."""
    plan = study.plan(profile)
    if not fuse:
        return {run.label: (run.label,) for run in plan}
    buckets: dict[tuple[str, str], list[str]] = {}
    for run in plan:
        buckets.setdefault((run.variant, fusion_bucket(TrainConfig(**run.config))), []).append(run.label)
    groups = []
    for bucket in buckets.values():  # a large bucket in near-equal groups: no one group holds a core alone
        parts = -(-len(bucket) // MAX_FUSED)
        groups += [tuple(bucket[i::parts]) for i in range(parts)]
    return {label: group for group in groups for label in group}


MAX_PARALLEL = 256  # groups one step may train at once on a CPU (threads)


def study_parallelism(parallel: int, device: str) -> int:
    """How many fused groups train at once: on a CPU one per core (0: as many as this process may use), each on
    one thread, so a group's numbers never depend on what trains beside it; on a GPU one at a time."""
    if pick_device(device).type == "cuda":
        return 1
    return parallel or len(os.sched_getaffinity(0))


def run_group(tracker: Tracker, layout: DataLayout, study: Study, profile: str, labels: list[str],
              cache_ref: TensorCacheRef, network: FeatureNetworkRef, *, fuse: bool = True,
              device: str = DEFAULT_DEVICE, parallel: int = 1, tags: dict[str, str] | None = None,
              log: Callable[[str], None] = print,
              stop: threading.Event | None = None) -> list[tuple[StudyRunResult, bool]]:
    """Study runs, each with its whole fused group (`fusion_groups`): a group whose members are all finished is
    reused; otherwise all its members train side by side as one model (one member: a solo training), each then
    evaluated and logged as its own nested MLflow run. Members not asked for are kept for later reuse. On a
    CPU, up to `parallel` groups train at once, the longest first, each on one thread (`study_parallelism`).
    Returns each asked run's result and whether it was reused, in the order of `labels`."""
    code, groups, done = source_version(), fusion_groups(study, profile, fuse), {}
    todo = list(dict.fromkeys(groups[label] for label in labels))
    if pick_device(device).type == "cuda":
        for group in todo:
            done |= _run_one_group(tracker, layout, study, profile, group, cache_ref, network, code, device=device,
                                   tags=tags, log=log, stop=stop)
        return [done[label] for label in labels]
    iterations = {run.label: run.config["iterations"] for run in study.plan(profile)}
    work = {group: sum(iterations[label] for label in group) for group in todo}
    lines: queue.Queue[str] = queue.Queue()  # the workers' lines, logged by this thread (Dagster's log is its)
    halt = threading.Event()  # `stop`, or this thread interrupted: every group ends at its next step
    with deterministic("cpu"), ThreadPoolExecutor(max(1, min(parallel, len(todo)))) as pool:
        futures = [pool.submit(_run_one_group, tracker, layout, study, profile, group, cache_ref, network, code,
                               device=device, tags=tags, log=lines.put, stop=halt)
                   for group in sorted(todo, key=lambda g: -work[g])]
        try:
            while not all(f.done() for f in futures) or not lines.empty():
                if stop is not None and stop.is_set():
                    halt.set()
                with contextlib.suppress(queue.Empty):
                    log(lines.get(timeout=0.2))
        except BaseException:
            halt.set()
            raise
        for future in futures:  # the first failure, after every group has ended
            done |= future.result()
    return [done[label] for label in labels]


def _run_one_group(tracker: Tracker, layout: DataLayout, study: Study, profile: str, group: tuple[str, ...],
                   cache_ref: TensorCacheRef, network: FeatureNetworkRef, code: str, *, device: str,
                   tags: dict[str, str] | None, log: Callable[[str], None],
                   stop: threading.Event | None) -> dict[str, tuple[StudyRunResult, bool]]:
    plans = {label: study.plan(profile, (label,))[0] for label in group}
    torch_device = pick_device(device)
    keys = {label: run_key(run, cache_ref.content_hash, code, group, torch_device) for label, run in plans.items()}
    folders = {label: layout.study_run(study.name, profile, label, keys[label]) for label in group}
    if all(RunFiles(folder).result.is_file() for folder in folders.values()):
        return {label: (_finished(RunFiles(folders[label]).result, layout.root), True) for label in group}
    if len(group) > 1:
        log(f"training {len(group)} runs side by side as one model: {', '.join(group)}")
    requests = [RunRequest(TrainConfig(**plans[label].config), folders[label],
                           study_run_key(study.name, profile, label),
                           {**(tags or {}), "study": study.name, "profile": profile, "label": label,
                            "run_key": keys[label]},
                           {f"changes.{k}": v for k, v in plans[label].changes.items()}, plans[label].snapshots, label)
                for label in group]
    group_dir = folders[group[0]] if len(group) == 1 else layout.study_group(
        study.name, profile, hashlib.sha256(" ".join(keys[label] for label in group).encode()).hexdigest()[:16])
    trained = train_and_log_group(tracker, cache_ref, requests, group_dir, device=device,
                                  log=lambda line: log(line if len(group) > 1 else f"{group[0]}: {line}"), stop=stop)
    origin = provenance(torch_device, group_labels(requests), TrainConfig(**plans[group[0]].config).on(
        torch_device).precision)
    return {label: (_evaluated(tracker, plans[label], keys[label], training, result, network, origin,
                               study_run_key(study.name, profile, label), device,
                               lambda line, label=label: log(f"{label}: {line}")), False)
            for label, (training, result) in zip(group, trained, strict=True)}


def _finished(path: Path, root: Path) -> StudyRunResult:
    """A finished study run's record, checked as a stage record is (types, paths inside the data root)."""
    try:
        return decode_record(StudyRunResult, read_json(path, "study run record"), root)
    except ValueError as err:
        raise PipelineError(f"study run record {path} is refused: {str(err)[:300]}") from None


def _evaluated(tracker: Tracker, run: PlannedRun, key: str, trained: TrainedRun, result: TrainResult,
               network: FeatureNetworkRef, origin: dict[str, str], partition: str, device: str,
               log: Callable[[str], None]) -> StudyRunResult:
    """A trained study run evaluated (and its snapshot measured), its record written last: only a finished run
    is ever reused."""
    settings = EvalSettings(**run.evaluation)
    final = evaluate_and_log(tracker, trained, network, settings, partition=partition, device=device, log=log)
    snapshot = run.snapshots[0] if run.snapshots else None
    early = measure(trained, network, settings, device=device, iteration=snapshot, log=lambda _: None) \
        if snapshot else None
    record = StudyRunResult(partition, key, run.label, run.variant, run.arch, trained.cache.content_hash,
                            network.network_id, trained.path, final.metrics, early.metrics if early else {}, snapshot,
                            final.unavailable, result.iterations / max(result.seconds, 1e-9), result.seconds,
                            trained.mlflow_run_id, final, origin)
    atomic_write_json(RunFiles(Path(trained.path)).result, encode_record(record))
    return record


def build_report(layout: DataLayout, study: Study, profile: str, records: dict[str, StudyRunResult],
                 link: Callable[[str], str] = str) -> tuple[Path, dict[str, Verdict], int]:
    """The study's HTML report from its finished runs' records (by partition key): path, verdicts, runs shown."""
    reports, metrics = [], {}
    for run in study.plan(profile):
        record = records.get(study_run_key(study.name, profile, run.label))
        if record is None:
            continue
        folder = RunFiles(Path(record.path))
        timeline = folder.evaluation().timeline
        pair = (folder.evaluation(record.snapshot).samples, folder.evaluation().samples) if record.snapshot else None
        reports.append(RunReport(run, record.metrics, record.unavailable, str(folder.final_grid),
                                 (str(pair[0]), str(pair[1])) if pair and all(p.is_file() for p in pair) else None,
                                 str(timeline) if timeline.is_file() else None,
                                 json.loads(folder.history.read_text()), record.it_per_s, record.seconds,
                                 link(record.mlflow_run_id), record.provenance or None))
        metrics[run.label] = record.metrics
        if record.snapshot_metrics:
            metrics[f"{run.label}{SNAPSHOT_MARK}"] = record.snapshot_metrics
    verdicts = judge(study, metrics, profile)
    atomic_write_json(layout.study_findings(study.name, profile), findings(study, profile, reports, verdicts))
    page = report_html(study, profile, reports, verdicts)
    return atomic_write_bytes(layout.study_report(study.name, profile), page.encode()), verdicts, len(reports)
