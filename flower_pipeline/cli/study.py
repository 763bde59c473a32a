"""`flower-pipeline study run|report|list`: a study's runs launched one by one as partitions of `study_runs`,
then its report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flower_pipeline.catalog import CATALOGUED, Variant
from flower_pipeline.cli import launch
from flower_pipeline.cli.launch import run_job
from flower_pipeline.errors import PipelineError
from flower_pipeline.layout import DataLayout
from flower_pipeline.metrics import terminal_line
from flower_pipeline.verdicts import STATUSES


def _ensure_variant(variant: Variant, data_dir: Path) -> None:
    """Prepare a variant the study needs: its dataset from the official source (or as prepared before)."""
    import dagster as dg

    from flower_pipeline.defs.partitions import add_variant

    instance = launch.instance()
    if variant.name in instance.get_materialized_partitions(dg.AssetKey("feature_network")):
        return
    add_variant(instance, variant)
    if variant.dataset not in instance.get_materialized_partitions(dg.AssetKey("extracted_images")):
        print(f"preparing {variant.dataset} (download and extraction) …", flush=True)
        run_job("prepare_dataset", variant.dataset, {}, data_dir)
    print(f"preparing {variant.name} …", flush=True)
    run_job("prepare_variant", variant.name, {}, data_dir)


def _cpu_estimate(plan: list[Any]) -> str:
    """How long the plan would take here, from this machine's measured architecture-1 speed at its size."""
    import time

    import numpy as np

    from flower_pipeline.training import TrainConfig, Trainer, pick_device

    size = Variant.parse(plan[0].variant).size
    images = np.random.default_rng(0).integers(0, 256, (64, 3, size, size), dtype=np.uint8)
    trainer = Trainer(TrainConfig(arch="arch1"), images, pick_device("cpu"))
    trainer.run_step()
    started = time.perf_counter()
    for _ in range(5):
        trainer.run_step()
    rate = 5 / (time.perf_counter() - started)
    hours = sum(run.config["iterations"] for run in plan) / rate / 3600
    return f"about {hours:.0f} hours at the {rate:.1f} it/s measured here"


def _study_file(study: Any) -> str | None:
    """The study file for the runs' config: none for the project's own studies (found by name)."""
    from flower_pipeline.study import STUDIES_DIR

    return None if Path(study.path).parent == STUDIES_DIR else study.path


def run_study(args: argparse.Namespace) -> None:
    """Run (or resume) a study: prepare its variants, then each run as a partition of the `study_runs` job."""
    from flower_pipeline.defs.study_assets import study_partitions, study_run_partitions
    from flower_pipeline.registry import tracking
    from flower_pipeline.study import MAX_PARALLEL, fusion_groups, load_study, study_parallelism, study_run_key
    from flower_pipeline.training import pick_device

    if not 0 <= args.parallel <= MAX_PARALLEL:
        raise PipelineError(f"--parallel must be 0 (one per core) to {MAX_PARALLEL}, got {args.parallel}")
    study = load_study(args.study)
    plan = study.plan(args.profile, tuple(args.only or ()))
    if args.profile == "full" and pick_device(args.device).type != "cuda":
        warning = (f"the full profile trains {len(plan)} runs of up to 20,000 iterations on a CPU: "
                   f"{_cpu_estimate(plan)}")
        if not args.yes:
            raise PipelineError(f"{warning}; pass --yes to start anyway, or use --profile quick")
        print(f"warning: {warning}", file=sys.stderr)
    instance = launch.instance()
    prepared = set(instance.get_dynamic_partitions("datasets"))
    for run in plan:  # before anything starts: a collection must have been prepared with its source
        dataset = Variant.parse(run.variant).dataset
        if dataset not in CATALOGUED and dataset not in prepared:
            raise PipelineError(f"run {run.label} uses the collection {dataset!r}, which is not prepared; prepare it "
                                f"first: flower-pipeline prepare --dataset custom --name {dataset} --source …")
    unavailable = {}
    for name in sorted({run.variant for run in plan}):
        try:
            _ensure_variant(Variant.parse(name), args.data_dir)
        except PipelineError as err:  # e.g. Flowers-102 with no network: its runs are not measured, the rest go on
            unavailable[name] = str(err)
    for name, reason in unavailable.items():
        skipped = [run.label for run in plan if run.variant == name]
        print(f"warning: skipping {len(skipped)} runs on {name}, which could not be prepared ({reason}); the claims "
              "that use them are reported not measured", file=sys.stderr)
    plan = [run for run in plan if run.variant not in unavailable]
    if not plan:
        raise PipelineError(f"no run of {study.name} ({args.profile}) has its data: "
                            + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    # A run trains with its whole fused group, a pure function of the study and profile (another group would be
    # another run): --only adds the rest of each chosen run's group.
    planned_groups = fusion_groups(study, args.profile, fuse=not args.no_fuse)
    wanted = {label for run in plan for label in planned_groups[run.label]}
    added = sorted(wanted - {run.label for run in plan})
    if added:
        print(f"{len(added)} more runs train with the chosen ones, their fused groups' other members "
              f"({', '.join(added[:6])}{' …' if len(added) > 6 else ''}); --no-fuse trains the chosen runs alone",
              flush=True)
    plan = [run for run in study.plan(args.profile) if run.label in wanted]
    by_label = {run.label: run for run in plan}
    groups = [list(group) for group in dict.fromkeys(planned_groups[label] for label in by_label)]
    keys = [study_run_key(study.name, args.profile, label) for group in groups for label in group]
    # New partitions are added group by group, so each fused group is one range of them (one run, one step).
    new = [k for k in keys if not instance.has_dynamic_partition(study_run_partitions.name, k)]
    instance.add_dynamic_partitions(study_run_partitions.name, new)
    report_key = f"{study.name}:{args.profile}"
    if not instance.has_dynamic_partition(study_partitions.name, report_key):
        instance.add_dynamic_partitions(study_partitions.name, [report_key])
    order = instance.get_dynamic_partitions(study_run_partitions.name)
    batches = _contiguous(groups, study.name, args.profile, order)
    fused = sum(len(batch) for batch in batches if len(batch) > 1)
    parallel = study_parallelism(args.parallel, args.device)
    print(f"{len(plan)} runs in {len(batches)} trainings" + (f" ({fused} trained side by side in "
          f"{sum(len(batch) > 1 for batch in batches)} fused groups; --no-fuse trains one at a time)" if fused
          else "") + (f"; up to {parallel} at once, one per core" if parallel > 1 else ""), flush=True)
    if parallel > 1:  # neighbouring groups of one variant share a step, which trains them side by side
        batches = _steps(batches, {label: run.variant for label, run in by_label.items()}, study.name, args.profile,
                         order)
    store = tracking(data_dir=args.data_dir)
    parent = store.start_run(f"study {study.name} ({args.profile})", {"study": study.name, "profile": args.profile})
    records = []
    config = {"study_file": _study_file(study), "parent_run_id": parent, "device": args.device,
              "fuse": not args.no_fuse, "parallel": args.parallel}
    try:
        for batch in batches:
            first, last = study_run_key(study.name, args.profile, batch[0]), study_run_key(study.name, args.profile,
                                                                                          batch[-1])
            if len(batch) > 1:  # a step reports when it ends: say what it is training meanwhile
                print(f"training {len(batch)} runs: {', '.join(batch)}", flush=True)
            result = run_job("study_runs", first, {"study_run": {"config": config}}, args.data_dir,
                             last if len(batch) > 1 else None)
            reused = {m.partition: m.metadata["reused"].value
                      for m in result.asset_materializations_for_node("study_run")}
            for label in batch:
                run, key = by_label[label], study_run_key(study.name, args.profile, label)
                record = result.output_for_node("study_run", key)
                records.append((run, record))
                state = "reused" if reused.get(key) else f"{record.seconds:.0f} s"
                print(f"[{len(records)}/{len(plan)}] {run.label} ({run.variant}, {run.arch}): {state}; "
                      f"{terminal_line(record.metrics, record.unavailable, 'progress')}", flush=True)
        run_job("study_reports", report_key, {"study_report": {"config": config}}, args.data_dir)
    except BaseException:
        store.end_run(parent, "KILLED")
        raise
    store.end_run(parent)
    if args.register:
        for run, record in records:
            _register_study_run(store, study.name, run, record)
    print(f"done; the report: flower-pipeline study report {args.study} --profile {args.profile} -o report.html")


def _positions(study: str, profile: str, order: list[str]) -> Callable[[str], int]:
    """A run label's place among the instance's study_run partitions (a Dagster run covers a range of them)."""
    from flower_pipeline.study import study_run_key

    position = {key: i for i, key in enumerate(order)}
    return lambda label: position[study_run_key(study, profile, label)]


def _contiguous(groups: list[list[str]], study: str, profile: str, order: list[str]) -> list[list[str]]:
    """Each group split where its partitions are not neighbours in the instance's order (a run covers a range
    of partitions); a group added in an earlier invocation, one by one, may so train in parts."""
    at = _positions(study, profile, order)
    batches = []
    for group in groups:
        ranked = sorted(group, key=at)
        batch = [ranked[0]]
        for label in ranked[1:]:
            if at(label) == at(batch[-1]) + 1:
                batch.append(label)
            else:
                batches.append(batch)
                batch = [label]
        batches.append(batch)
    return batches


def _steps(batches: list[list[str]], variant: dict[str, str], study: str, profile: str,
           order: list[str]) -> list[list[str]]:
    """Neighbouring batches joined into one step where they are one range of partitions on one variant: a step
    on a CPU trains its groups side by side, one per core (the asset reads one variant's cache)."""
    at = _positions(study, profile, order)
    steps: list[list[str]] = []
    for batch in batches:
        if steps and variant[steps[-1][-1]] == variant[batch[0]] and at(steps[-1][-1]) + 1 == at(batch[0]):
            steps[-1] = steps[-1] + batch
        else:
            steps.append(list(batch))
    return steps


def _register_study_run(store: Any, study: str, run: Any, record: Any) -> None:
    """A study run's generator as a version of `<variant>-<arch>`, through the one registration path."""
    from flower_pipeline.runs import register

    registered = register(store, record.evaluation, tags={"study": study, "study_run": run.label},
                          log=lambda _: None)
    print(f"  registered {registered.model} v{registered.version}: {registered.promotion} ({registered.reason})")


def write_report(args: argparse.Namespace) -> None:
    """Build the study's report from its finished runs and write the HTML page to -o."""
    import shutil

    from flower_pipeline.defs.study_assets import study_partitions
    from flower_pipeline.study import load_study

    study = load_study(args.study)
    study.plan(args.profile)  # checks the profile
    instance, key = launch.instance(), f"{study.name}:{args.profile}"
    if not instance.has_dynamic_partition(study_partitions.name, key):
        raise PipelineError(f"study {study.name} has no runs in profile {args.profile} yet; start them with "
                            f"flower-pipeline study run {args.study} --profile {args.profile}")
    config = {"study_file": _study_file(study)}
    report = run_job("study_reports", key, {"study_report": {"config": config}},
                     args.data_dir).output_for_node("study_report")
    copies = [(Path(report.path), args.output)]
    if args.findings:
        copies.append((DataLayout.at(args.data_dir).study_findings(study.name, args.profile), args.findings))
    for source, target in copies:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        except OSError as err:
            raise PipelineError(f"cannot write {target}: {err.strerror or err}") from None
    counts = {status: list(report.verdicts.values()).count(status) for status in STATUSES}
    print(f"{args.output}: {len(report.verdicts)} claims: " + ", ".join(f"{n} {s}" for s, n in counts.items()))


def list_studies(args: argparse.Namespace) -> None:
    """The studies, their profiles, and each run's state in this data folder."""
    from flower_pipeline.study import available_studies, load_study

    layout = DataLayout.at(args.data_dir)
    for name in available_studies():
        study = load_study(name)
        print(f"{name}: {study.title}")
        for profile in study.profiles:
            plan = study.plan(profile)
            done = [run.label for run in plan if layout.finished_study_runs(name, profile, run.label)]
            print(f"  {profile}: {len(done)} of {len(plan)} runs finished ({study.profiles[profile].seeds} seeds "
                  f"each of {len(study.runs)})" + (f": {', '.join(done)}" if 0 < len(done) < len(plan) else ""))
