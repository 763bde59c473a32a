"""A study as data: runs grouped under the claims they test, profiles that size them, verdicts and a report.

    study = load_study("source")                       # flower_pipeline/studies/source.yaml, or a path
    plan = study.plan("quick")                         # every run, resolved: variant, settings, snapshots
    verdicts = judge(study, results)                   # each claim: supported, not supported or not measured
    html = report_html(study, "quick", results, verdicts)

A run's key hashes everything that shapes its result (variant, architecture,
settings, evaluation settings, the tensor cache's content and the code
version), so a finished run is reused only when all of them match.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from flower_pipeline import source_version
from flower_pipeline.catalog import Variant
from flower_pipeline.errors import PipelineError
from flower_pipeline.evaluation import EvalSettings
from flower_pipeline.feature_network import FeatureNetworkRef
from flower_pipeline.ingest import TensorCacheRef
from flower_pipeline.layout import DataLayout
from flower_pipeline.metrics import BY_NAME, SUMMARY
from flower_pipeline.models import ARCHITECTURES
from flower_pipeline.runs import Evaluation, evaluate_and_log, measure, train_and_log
from flower_pipeline.storage import atomic_write_bytes, atomic_write_json, decode_record, encode_record
from flower_pipeline.tracking import Tracker
from flower_pipeline.training import DEFAULT_DEVICE, FULL_ITERATIONS, TrainConfig

STUDIES_DIR = Path(__file__).parent / "studies"


@dataclass(frozen=True)
class Profile:
    name: str
    size: int
    iterations: int
    settings: dict[str, Any] = field(default_factory=dict)  # training overrides for every run
    evaluation: dict[str, Any] = field(default_factory=dict)
    stand_ins: dict[str, str] = field(default_factory=dict)  # dataset → the dataset that stands in for it
    note: str = ""


@dataclass(frozen=True)
class RunSpec:
    label: str
    variant: str  # dataset-mode; the profile adds the size
    arch: str
    settings: dict[str, Any]
    snapshots: tuple[int, ...]
    claim: str


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    runs: tuple[str, ...]  # labels it reads, its own and those it uses


@dataclass(frozen=True)
class PlannedRun:
    """A run resolved for a profile: what to train, on which variant, what to evaluate."""

    label: str
    variant: str  # e.g. flowers17-color-32
    stands_in_for: str | None  # e.g. flowers102-color-32 when synthetic data stands in
    arch: str
    config: dict[str, Any]  # TrainConfig fields
    evaluation: dict[str, Any]  # EvalSettings fields
    snapshots: tuple[int, ...]
    changes: dict[str, Any]  # what the study file changes, for the table


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
        unknown = [label for label in only if label not in self.runs]
        if unknown:
            raise PipelineError(f"study {self.name} has no run {unknown[0]!r}; runs: {', '.join(self.runs)}")
        chosen = self.profiles[profile]
        return [_resolve(spec, chosen) for label, spec in self.runs.items() if not only or label in only]


def _resolve(spec: RunSpec, profile: Profile) -> PlannedRun:
    dataset, mode = spec.variant.rsplit("-", 1)
    stand_in = profile.stand_ins.get(dataset)
    variant = Variant(stand_in or dataset, mode, profile.size).name
    scale = profile.iterations / FULL_ITERATIONS
    iterations = max(1, round(spec.settings.get("iterations", FULL_ITERATIONS) * scale))
    config = {**profile.settings, **spec.settings, "arch": spec.arch, "iterations": iterations}
    snapshots = tuple(max(1, round(s * scale)) for s in spec.snapshots)
    return PlannedRun(spec.label, variant, f"{dataset}-{mode}-{profile.size}" if stand_in else None, spec.arch,
                      config, dict(profile.evaluation), snapshots, dict(spec.settings))


def run_key(run: PlannedRun, cache_hash: str, code: str) -> str:
    """What shapes a run's result: a changed setting, cache or code version makes a new key."""
    payload = {"variant": run.variant, "config": asdict(TrainConfig(**run.config).resolved()),
               "evaluation": asdict(EvalSettings(**run.evaluation)), "snapshots": run.snapshots,
               "cache": cache_hash, "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def available_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def load_study(name_or_path: str) -> Study:
    """A study by name (flower_pipeline/studies/<name>.yaml) or path, checked: every mistake is one line."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = STUDIES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise PipelineError(f"unknown study {name_or_path!r}; studies: {', '.join(available_studies())}")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"cannot read the study file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path} is not a study file (a mapping with name, profiles and claims)")
    where = f"study file {path.name}"
    try:
        return _parse(data, path, where)
    except (AttributeError, TypeError, ValueError) as err:  # a list where a mapping belongs, text for a number
        raise PipelineError(f"{where} is malformed ({type(err).__name__}: {err}); see "
                            "flower_pipeline/studies/source.yaml for the layout") from None


def _parse(data: dict[str, Any], path: Path, where: str) -> Study:
    profiles = {name: _profile(name, spec or {}, where) for name, spec in (data.get("profiles") or {}).items()}
    if not profiles:
        raise PipelineError(f"{where} has no profiles")
    runs: dict[str, RunSpec] = {}
    claims = []
    for claim in data.get("claims") or []:
        claim_id = str(claim.get("id", ""))
        own = []
        for spec in claim.get("runs") or []:
            run = _run(spec, claim_id, where)
            if run.label in runs:
                raise PipelineError(f"{where}: the label {run.label!r} is used twice")
            runs[run.label] = run
            own.append(run.label)
        claims.append(Claim(claim_id, str(claim.get("text", "")), (*own, *map(str, claim.get("uses") or []))))
    for claim in claims:
        missing = [label for label in claim.runs if label not in runs]
        if missing:
            raise PipelineError(f"{where}: claim {claim.id!r} uses an unknown run {missing[0]!r}")
    return Study(str(data.get("name", path.stem)), str(data.get("title", "")), profiles, runs, tuple(claims),
                 str(path))


TRAIN_SETTINGS = {f.name for f in fields(TrainConfig)} - {"arch"}
EVAL_SETTINGS = {f.name for f in fields(EvalSettings)}


def _profile(name: str, spec: dict[str, Any], where: str) -> Profile:
    settings, evaluation = dict(spec.get("settings") or {}), dict(spec.get("evaluation") or {})
    _known(settings, TRAIN_SETTINGS, f"{where}, profile {name}")
    _known(evaluation, EVAL_SETTINGS, f"{where}, profile {name}, evaluation")
    profile = Profile(name, int(spec.get("size", 64)), int(spec.get("iterations", FULL_ITERATIONS)), settings,
                      evaluation, dict(spec.get("stand_ins") or {}), str(spec.get("note", "")))
    Variant("synthetic", "color", profile.size)  # checks the size
    return profile


def _run(spec: dict[str, Any], claim: str, where: str) -> RunSpec:
    label = str(spec.get("label", ""))
    if not label:
        raise PipelineError(f"{where}: a run of claim {claim!r} has no label")
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
    return RunSpec(label, variant, arch, settings, tuple(int(s) for s in spec.get("snapshots") or ()), claim)


def _known(settings: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(settings) - known)
    if unknown:
        raise PipelineError(f"{where}: unknown setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")


# --- verdicts ---------------------------------------------------------------------------------------------------

Metrics = dict[str, dict[str, float]]  # label (or label@iteration for a snapshot) → evaluation metrics


@dataclass(frozen=True)
class Verdict:
    status: str  # supported, not supported, not measured
    evidence: str


def judge(study: Study, results: Metrics, stand_ins: dict[str, str] | None = None) -> dict[str, Verdict]:
    """Each claim's verdict from the runs' metrics; a claim whose runs are missing is not measured."""
    verdicts = {}
    for claim in study.claims:
        rule = RULES.get(claim.id)
        missing = [label for label in claim.runs if label not in results]
        if rule is None:
            verdicts[claim.id] = Verdict("not measured", "no rule computes this claim's verdict")
        elif missing:
            verdicts[claim.id] = Verdict("not measured", f"runs not finished: {', '.join(missing)}")
        elif claim.id == "flowers102" and stand_ins and "flowers102" in stand_ins:
            verdicts[claim.id] = Verdict("not measured", f"Flowers-102 is not available here; "
                                         f"{stand_ins['flowers102']} data stood in for it")
        else:
            try:
                verdicts[claim.id] = rule(results)
            except NotMeasured as missing_number:
                verdicts[claim.id] = Verdict("not measured", str(missing_number))
    return verdicts


def _verdict(supported: bool, evidence: str) -> Verdict:
    return Verdict("supported" if supported else "not supported", evidence)


class NotMeasured(Exception):
    """A rule's number is missing (e.g. fd_flowers unavailable): the claim is not measured, not refuted."""


def _get(r: Metrics, label: str, key: str) -> float:
    value = r.get(label, {}).get(key)
    if value is None or not math.isfinite(value):
        raise NotMeasured(f"{label} has no {key}")
    return float(value)


def _collapse(r: Metrics) -> Verdict:
    arch2 = "f17-color-arch2"
    yellow_purple = _get(r, arch2, "share_yellow") + _get(r, arch2, "share_purple")
    real = _get(r, arch2, "real_share_yellow") + _get(r, arch2, "real_share_purple")
    return _verdict(yellow_purple > 0.5 and yellow_purple > 1.25 * real,
                    f"arch2's samples: {yellow_purple:.0%} yellow or purple (real photos {real:.0%}); colour "
                    f"coverage {_get(r, arch2, 'colour_coverage'):.2f}")


def _batch(r: Metrics) -> Verdict:
    b16 = "f17-color-arch2@snapshot" if "f17-color-arch2@snapshot" in r else "f17-color-arch2"
    fd16, fd8, fd32 = (_get(r, label, "fd_flowers") for label in (b16, "arch2-batch8", "arch2-batch32"))
    return _verdict(fd8 > fd16 and fd32 > fd16, f"fd_flowers at the same iterations: batch 8 {fd8:.2f}, "
                                               f"16 {fd16:.2f}, 32 {fd32:.2f} (lower is better)")


def _mixing(r: Metrics) -> Verdict:
    shares = {label: _get(r, label, "near_copy_share_pixels") for label in ("f17-color-arch1", "f17-color-arch2")}
    return _verdict(max(shares.values()) < 0.05,
                    "near-copies of training photos: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))


def _arch1_diversity(r: Metrics) -> Verdict:
    a1, a2 = "f17-color-arch1", "f17-color-arch2"
    white = _get(r, a1, "share_white")
    yellow_purple = _get(r, a1, "share_yellow") + _get(r, a1, "share_purple")
    recall1, recall2 = _get(r, a1, "recall"), _get(r, a2, "recall")
    return _verdict(recall1 > recall2 and white >= yellow_purple / 4,
                    f"recall arch1 {recall1:.2f} vs arch2 {recall2:.2f}; arch1's samples white {white:.0%}, "
                    f"yellow or purple {yellow_purple:.0%}")


def _smoothness(r: Metrics) -> Verdict:
    a1, a2 = (_get(r, label, "high_frequency_ratio") for label in ("f17-color-arch1", "f17-color-arch2"))
    return _verdict(a1 < a2, f"high-frequency energy over the photos' (1 = like photos, above = pixelated): "
                             f"arch1 {a1:.2f}, arch2 {a2:.2f}")


def _dropout(r: Metrics) -> Verdict:
    base, dropped = _get(r, "f17-color-arch1", "fd_flowers"), _get(r, "arch1-dropout", "fd_flowers")
    return _verdict(dropped > 1.2 * base, f"fd_flowers without dropout {base:.2f}, with dropout 0.3 {dropped:.2f}")


NOMINAL_LABELS = ("arch1-labels-0.9-0.1", "arch1-labels-0.8-0.2", "arch1-mbd-doubled", "arch1-mbd-off",
                  "arch1-rmsprop", "arch1-sgd", "arch1-uniform-noise")


def _nominal(r: Metrics) -> Verdict:
    base = _get(r, "f17-color-arch1", "fd_flowers")
    changes = {label: _get(r, label, "fd_flowers") / base - 1 for label in NOMINAL_LABELS}
    large = [label for label, change in changes.items() if abs(change) > 0.25]
    listed = ", ".join(f"{label} {change:+.0%}" for label, change in changes.items())
    return _verdict(not large, f"fd_flowers against arch1's {base:.2f} (nominal: within ±25%): {listed}")


def _iterations(r: Metrics) -> Verdict:
    final, early = _get(r, "f17-color-arch1", "fd_flowers"), _get(r, "f17-color-arch1@snapshot", "fd_flowers")
    return _verdict(abs(early / final - 1) <= 0.15,
                    f"fd_flowers of the same run at 3/4 of its iterations {early:.2f}, at the end {final:.2f}")


def _d_scores(r: Metrics) -> Verdict:
    a1, a2 = "f17-color-arch1", "f17-color-arch2"
    real1, fake1, real2 = (_get(r, a1, "d_real_train_mean"), _get(r, a1, "d_fake_mean"),
                           _get(r, a2, "d_real_train_mean"))
    return _verdict(0.1 < real1 < 0.9 and 0.1 < fake1 < 0.9 and real2 > 0.9,
                    f"arch1 D(x) {real1:.2f}, D(G(z)) {fake1:.2f}; arch2 D(x) {real2:.2f}, D(G(z)) "
                    f"{_get(r, a2, 'd_fake_mean'):.2f} (training images, scored as trained); held-out D(x) arch1 "
                    f"{_get(r, a1, 'd_real_holdout_mean'):.2f}, arch2 {_get(r, a2, 'd_real_holdout_mean'):.2f}")


def _sharpening(r: Metrics) -> Verdict:
    on, off = "f17-color-arch1", "arch1-no-sharpening"
    hf_on, hf_off = _get(r, on, "high_frequency_ratio"), _get(r, off, "high_frequency_ratio")
    fd_on, fd_off = _get(r, on, "fd_flowers"), _get(r, off, "fd_flowers")
    return _verdict(hf_on > hf_off and fd_on <= fd_off,
                    f"high-frequency energy ratio with decaying noise {hf_on:.2f}, without {hf_off:.2f}; "
                    f"fd_flowers {fd_on:.2f} vs {fd_off:.2f}")


def _flowers102(r: Metrics) -> Verdict:
    f17 = _get(r, "f17-color-arch1", "fd_flowers") < _get(r, "f17-color-arch2", "fd_flowers")
    f102 = _get(r, "f102-color-arch1", "fd_flowers") < _get(r, "f102-color-arch2", "fd_flowers")
    return _verdict(f17 != f102, f"arch1 better than arch2 by fd_flowers: Flowers-17 {f17}, Flowers-102 {f102}")


def _black_and_white(r: Metrics) -> Verdict:
    recall = {label: _get(r, label, "recall") for label in ("f17-gray-arch1", "f17-gray-arch2", "f102-gray-arch1",
                                                            "f102-gray-arch2")}
    return _verdict(all(v > 0.1 for v in recall.values()),
                    "recall of the black-and-white runs: " + ", ".join(f"{k} {v:.2f}" for k, v in recall.items()))


RULES: dict[str, Callable[[Metrics], Verdict]] = {
    "collapse": _collapse, "batch-size": _batch, "mixing": _mixing, "arch1-diversity": _arch1_diversity,
    "smoothness": _smoothness, "dropout": _dropout, "nominal": _nominal, "iterations": _iterations,
    "d-scores": _d_scores, "sharpening": _sharpening, "flowers102": _flowers102, "black-and-white": _black_and_white,
}


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
    path: str
    metrics: dict[str, float]
    snapshot_metrics: dict[str, float]  # the same measures for the generator kept at `snapshot`
    snapshot: int | None
    unavailable: dict[str, str]
    it_per_s: float
    seconds: float
    mlflow_run_id: str
    evaluation: Evaluation | None = None  # what registration takes (None in records of earlier versions)


@dataclass(frozen=True)
class StudyReport:
    study: str
    profile: str
    path: str  # report.html
    verdicts: dict[str, str]


def run_one(tracker: Tracker, layout: DataLayout, study: Study, profile: str, label: str, cache_ref: TensorCacheRef,
            network: FeatureNetworkRef, *, device: str = DEFAULT_DEVICE, tags: dict[str, str] | None = None,
            log: Callable[[str], None] = print) -> tuple[StudyRunResult, bool]:
    """One study run through the pipeline's run path (train, evaluate, logged as a nested MLflow run), or the
    finished result of the same settings, data and code. Returns the result and whether it was reused."""
    run = study.plan(profile, (label,))[0]
    key = run_key(run, cache_ref.content_hash, source_version())
    out_dir = layout.study_run(study.name, profile, label, key)
    done = out_dir / "result.json"
    if done.is_file():
        return decode_record(StudyRunResult, json.loads(done.read_text())), True
    partition = study_run_key(study.name, profile, label)
    trained, result = train_and_log(
        tracker, cache_ref, TrainConfig(**run.config), out_dir, name=partition, device=device,
        snapshots=run.snapshots, log=lambda line: log(f"{label}: {line}"),
        tags={**(tags or {}), "study": study.name, "profile": profile, "label": label, "run_key": key},
        params={f"changes.{k}": v for k, v in run.changes.items()})
    settings = EvalSettings(**run.evaluation)
    final = evaluate_and_log(tracker, trained, network, settings, partition=partition, device=device,
                             log=lambda line: log(f"{label}: {line}"))
    snapshot = run.snapshots[0] if run.snapshots else None
    early = measure(trained, network, settings, device=device, iteration=snapshot, log=lambda _: None) \
        if snapshot else None
    record = StudyRunResult(partition, key, label, run.variant, run.arch, cache_ref.content_hash,
                            network.network_id, str(out_dir), final.metrics, early.metrics if early else {}, snapshot,
                            final.unavailable, result.iterations / max(result.seconds, 1e-9), result.seconds,
                            trained.mlflow_run_id, final)
    atomic_write_json(done, encode_record(record))  # last: only a finished run is ever reused
    return record, False


def build_report(layout: DataLayout, study: Study, profile: str,
                 records: dict[str, StudyRunResult]) -> tuple[Path, dict[str, Verdict], int]:
    """The study's HTML report from its finished runs' records (by partition key): path, verdicts, runs shown."""
    reports, metrics = [], {}
    for run in study.plan(profile):
        record = records.get(study_run_key(study.name, profile, run.label))
        if record is None:
            continue
        folder = Path(record.path)
        timeline = folder / "evaluation" / "timeline.png"
        reports.append(RunReport(run, record.metrics, record.unavailable, str(folder / "final_grid.png"),
                                 str(timeline) if timeline.is_file() else None,
                                 json.loads((folder / "history.json").read_text()), record.it_per_s, record.seconds))
        metrics[run.label] = record.metrics
        if record.snapshot_metrics:
            metrics[f"{run.label}@snapshot"] = record.snapshot_metrics
    verdicts = judge(study, metrics, study.profiles[profile].stand_ins)
    page = report_html(study, profile, reports, verdicts)
    return atomic_write_bytes(layout.study_report(study.name, profile), page.encode()), verdicts, len(reports)


# --- the report ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunReport:
    """What the report shows of a finished run."""

    run: PlannedRun
    metrics: dict[str, float]
    unavailable: dict[str, str]
    grid: str  # the final fixed-noise grid (PNG path)
    timeline: str | None
    history: list[dict[str, float]]
    it_per_s: float
    seconds: float


TABLE_COLUMNS = {name: BY_NAME[name].title for name in SUMMARY}


def runs_table(reports: list[RunReport]) -> Any:
    """Every run as a row of a pandas DataFrame: label, variant, architecture, changes, metrics, speed."""
    import pandas as pd

    rows = []
    for report in reports:
        row: dict[str, Any] = {"label": report.run.label, "variant": report.run.variant, "arch": report.run.arch,
                               "changes": ", ".join(f"{k}={v}" for k, v in report.run.changes.items()) or "-"}
        for key, title in TABLE_COLUMNS.items():
            if key in report.metrics:
                row[title] = round(report.metrics[key], 4)
            else:
                row[title] = "n/a"  # why: listed once under the table (`unavailable_reasons`)
        row["it/s"], row["wall s"] = round(report.it_per_s, 1), round(report.seconds, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def unavailable_reasons(reports: list[RunReport]) -> dict[str, str]:
    """Why a table column says n/a: metric → reason, each said once."""
    reasons: dict[str, str] = {}
    for report in reports:
        for key in TABLE_COLUMNS:
            if key not in report.metrics and key in report.unavailable:
                reasons.setdefault(TABLE_COLUMNS[key], report.unavailable[key])
    return reasons


def _png(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(plot: Callable[[Any], None], width: float = 9, height: float = 3) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(width, height), dpi=90)
    plot(axes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _png(buffer.getvalue())


def _curves(reports: list[RunReport]) -> str:
    def plot(axes: Any) -> None:
        for report in reports:
            steps = [h["iteration"] for h in report.history]
            line, = axes.plot(steps, [h["d_real"] for h in report.history], label=f"{report.run.label} D(x)")
            axes.plot(steps, [h["d_fake"] for h in report.history], linestyle="--", color=line.get_color(),
                      label=f"{report.run.label} D(G(z))")
        axes.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("iteration")
        axes.legend(fontsize=7, ncol=2)

    return _figure(plot)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3;text-align:center}.supported{color:#11703a;font-weight:bold}.not-supported{color:#a01c1c;font-weight:bold}
.not-measured{color:#777;font-weight:bold}.note{background:#fff6d6;border:1px solid #e5cf7a;padding:.8em}
.grids{display:flex;flex-wrap:wrap;gap:12px}.grids figure{margin:0}figcaption{font-size:12px;text-align:center}
img{max-width:100%}"""


def report_html(study: Study, profile: str, reports: list[RunReport], verdicts: dict[str, Verdict]) -> str:
    """The study's report as one self-contained HTML page (tables by pandas, plots by matplotlib)."""
    chosen = study.profiles[profile]
    by_label = {r.run.label: r for r in reports}
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(study.title)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{esc(study.title)}</h1><p>Study <b>{esc(study.name)}</b>, profile <b>{esc(profile)}</b>: "
             f"{len(reports)} of {len(study.runs)} runs finished.</p>"]
    notes = [chosen.note] if chosen.note else []
    notes += [f"{esc(real)} is not available here: {esc(stand)} data (synthetic drawings, not photos) stands in "
              f"for it, and its claims are not measured." for real, stand in chosen.stand_ins.items()]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in notes]
    parts.append("<h2>The claims</h2><table><tr><th>claim</th><th>verdict</th><th>numbers</th></tr>")
    for claim in study.claims:
        verdict = verdicts[claim.id]
        parts.append(f"<tr><td style='text-align:left'>{esc(claim.text)}</td><td class='"
                     f"{verdict.status.replace(' ', '-')}'>{verdict.status}</td>"
                     f"<td style='text-align:left'>{esc(verdict.evidence)}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Every run</h2><p>D scores on training and held-out images, scored as D was trained; "
                 "fd_flowers, kd_flowers, precision and recall in the variant's own feature network's space "
                 "(they compare runs of this study, not published numbers); FID/KID where Inception weights "
                 "exist.</p>")
    parts.append(runs_table(reports).to_html(index=False, border=0, na_rep="-"))
    parts += [f"<p><b>{esc(column)} n/a</b>: {esc(reason)}</p>"
              for column, reason in unavailable_reasons(reports).items()]
    parts.append("<h2>Samples from the same fixed noise</h2><div class='grids'>")
    for report in reports:
        parts.append(f"<figure>{_png(Path(report.grid).read_bytes())}<figcaption>{esc(report.run.label)}"
                     "</figcaption></figure>")
    parts.append("</div><h2>Each claim's runs</h2>")
    for claim in study.claims:
        shown = [by_label[label] for label in claim.runs if label in by_label]
        if not shown:
            continue
        parts.append(f"<h3>{esc(claim.text)}</h3><p><i>{esc(verdicts[claim.id].status)}</i>: "
                     f"{esc(verdicts[claim.id].evidence)}</p>{_curves(shown)}")
    parts.append("<h2>Training timelines</h2><p>The first fixed-noise samples of grids taken during training, "
                 "oldest on top.</p><div class='grids'>")
    for report in reports:
        if report.timeline:
            parts.append(f"<figure>{_png(Path(report.timeline).read_bytes())}<figcaption>{esc(report.run.label)}"
                         "</figcaption></figure>")
    parts.append("</div></body></html>")
    return "\n".join(parts)
