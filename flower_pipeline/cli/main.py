"""`flower-pipeline`: prepare datasets and run the pipeline through Dagster from a terminal.

Every command materializes assets in the Dagster instance at $DAGSTER_HOME
(default: the project's dagster_home/), so its runs appear in the UI next to
scheduled ones.
Bad input ends with one `error:` line and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path

from flower_pipeline.catalog import (
    CATALOGUED,
    CROPS,
    CUSTOM,
    DEFAULT_CROP,
    DEFAULT_HOLDOUT,
    MODES,
    Variant,
    custom_name,
)
from flower_pipeline.cli import study
from flower_pipeline.cli.launch import dagster_home, instance, run_job
from flower_pipeline.errors import PipelineError, os_error_line, printable, unexpected_line
from flower_pipeline.layout import DataLayout
from flower_pipeline.models import ARCHITECTURES
from flower_pipeline.training import DEFAULT_DEVICE

MAX_SAMPLES = 10_000  # images `sample` makes in one call (64 px colour: 120 MB)
# A lookup against a tracking server that does not answer fails in seconds, not after MLflow's default
# seven retries with backoff (minutes); a user's own settings of these win.
LOOKUP_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _variant(args: argparse.Namespace) -> Variant:
    if args.dataset == CUSTOM:
        if not args.name:
            raise PipelineError("--dataset custom needs --name: what to call your collection, e.g. --name roses")
        return Variant(custom_name(args.name), args.mode, args.size)
    if args.name:
        raise PipelineError(f"--name is for your own collections (--dataset custom), not {args.dataset}")
    return Variant(args.dataset, args.mode, args.size)


def prepare(args: argparse.Namespace) -> None:
    """Download and extract the dataset (shared by its variants), then resize and cache the variant."""
    from flower_pipeline.defs.partitions import add_variant
    from flower_pipeline.download import DownloadLimits, is_url, refuse_credentials
    from flower_pipeline.feature_network import FeatureSettings
    from flower_pipeline.settings import given_flags

    variant = _variant(args)
    if not 0 <= args.holdout < 1:  # also checked by the tensor cache; here before anything runs
        raise PipelineError(f"--holdout must be at least 0 and below 1, got {args.holdout}")
    if args.source and is_url(args.source):
        refuse_credentials(args.source)  # before the run: its config is stored with it
    add_variant(instance(), variant)
    limits = given_flags(args, DownloadLimits, prefix="download_")
    run_job("prepare_dataset", variant.dataset,
            {"raw_archive": {"config": {"source": args.source, "sha256": args.sha256, "md5": args.md5, **limits}}},
            args.data_dir)
    features = {**given_flags(args, FeatureSettings, prefix="feature_net_"), "device": args.device}
    result = run_job("prepare_variant", variant.name,
                     {"resized_images": {"config": {"crop": args.crop}},
                      "tensor_cache": {"config": {"holdout_fraction": args.holdout}},
                      "feature_network": {"config": features}}, args.data_dir)
    ref, network = result.output_for_node("tensor_cache"), result.output_for_node("feature_network")
    n, c, h, w = ref.shape
    print(f"{ref.variant}: {n} images ({c}×{h}×{w}) in {len(ref.class_counts)} classes")
    print(f"tensor cache: {ref.path}")
    print(f"skipped: {len(ref.skipped)}" + "".join(f"\n  {printable(name)}: {printable(why)}"
                                                  for name, why in sorted(ref.skipped.items())))
    if network.path is None:
        print(f"feature network: unavailable: {network.unavailable}")
    else:
        print(f"feature network: held-out accuracy {network.accuracy:.1%} on {network.classes} classes "
              f"(chance {1 / network.classes:.1%}), {network.seconds:.0f} s")


def parse_seeds(text: str) -> list[int]:
    """`0-7`, `0,3,5` or both (`0-3,9`): the seeds of a sweep, bounded before any range is expanded."""
    from flower_pipeline.runs import MAX_SEEDS, seed_sweep
    from flower_pipeline.training import TrainConfig

    spans = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not (low.isdigit() and (high.isdigit() or not dash)):
            raise PipelineError(f"--seeds takes seeds and ranges such as 0-7 or 0,3,5, not {printable(text)!r}")
        spans.append((int(low), int(high or low)))
    if any(high < low for low, high in spans):
        raise PipelineError(f"--seeds: a range runs from low to high, not {printable(text)!r}")
    if sum(high - low + 1 for low, high in spans) > MAX_SEEDS:
        raise PipelineError(f"--seeds {printable(text)}: a sweep trains at most {MAX_SEEDS} seeds side by side")
    seeds = [seed for low, high in spans for seed in range(low, high + 1)]
    seed_sweep(TrainConfig(), seeds)  # repeats and out-of-range seeds, by the rule the training applies
    return seeds


def train(args: argparse.Namespace) -> None:
    """Train, evaluate and register one variant × architecture (the retraining job's three assets); with
    --seeds, a sweep of seeds trained side by side, the best registered."""
    from flower_pipeline.defs.partitions import existing_variant, training_key
    from flower_pipeline.evaluation import EvalSettings
    from flower_pipeline.metrics import terminal_line
    from flower_pipeline.settings import given_flags
    from flower_pipeline.training import SCORED_BY_DEFAULT, TrainConfig

    seeds = parse_seeds(args.seeds) if args.seeds else None  # a typo is told before anything is looked up
    variant = existing_variant(instance(), args.variant)
    training = {**given_flags(args, TrainConfig), "device": args.device}
    evaluation = {**given_flags(args, EvalSettings, prefix="eval_"), "device": args.device}
    training.pop("arch", None)
    # Scored snapshots by default here (off in the asset's config, so the demo and schedules pay nothing).
    training.setdefault("eval_every", training.get("iterations", TrainConfig().iterations) // SCORED_BY_DEFAULT)
    if seeds:
        training["seeds"] = seeds
    result = run_job("retrain_generators", training_key(variant.name, args.arch),
                     {"trained_generator": {"config": training}, "generator_evaluation": {"config": evaluation}},
                     args.data_dir)
    trained, evaluated = result.output_for_node("trained_generator"), result.output_for_node("generator_evaluation")
    registered, metrics = result.output_for_node("registered_generator"), evaluated.metrics
    print(f"{variant.name} × {args.arch}: {trained.iterations} iterations in {trained.seconds:.1f} s "
          f"on {trained.device}; outputs in {trained.path}")
    print(f"  {terminal_line(metrics, evaluated.unavailable)}")
    if evaluated.snapshots:
        print(f"  {len(evaluated.snapshots)} snapshots scored; evaluated and registered: iteration "
              f"{evaluated.iteration or trained.iterations}")
    told = getattr(args, "told", set())  # the demo's four trainings say each reason once
    for metric, what in (("fd_flowers", "fd_flowers"), ("fid", "FID and KID")):
        reason = evaluated.unavailable.get(metric)
        if reason and reason not in told:
            print(f"  {what} unavailable: {reason}")
            told.add(reason)
    if evaluated.sweep:
        _print_sweep(evaluated)
    print(f"  {registered.model} v{registered.version}: {registered.promotion} ({registered.reason})")


def _print_sweep(best: typing.Any) -> None:
    """Each seed of a sweep on one line, in seed order, the one that went on to the registry marked."""
    from flower_pipeline.runs import sweep_metric

    members = sorted((best, *best.sweep), key=lambda e: e.training.config["seed"])
    metric = sweep_metric(members)
    print(f"  seed sweep: {len(members)} seeds trained side by side, ranked by the quality gate, then {metric}")
    for e in members:
        mark = "  <- registered" if e is best else ""
        print(f"    seed {e.training.config['seed']:>3}: {metric} {e.metrics.get(metric, float('nan')):.4g}, "
              f"quality gate {e.gate_reason}{mark}")


# A CPU-sized schedule: the demo proves every step works, it does not make good flowers.
DEMO_VARIANTS = (Variant("synthetic", "color", 32), Variant("synthetic", "gray", 32))
DEMO_TRAINING = {"iterations": 300, "features": 16, "batch_size": 16, "log_every": 50, "sample_every": 50,
                 "eval_every": 0}  # no scored snapshots: the demo shows the path, not the best of a short run
DEMO_EVALUATION = {"eval_samples": 256}


def demo(args: argparse.Namespace) -> None:
    """Everything on the synthetic data, in colour and black-and-white: ingest, both architectures,
    evaluation, registry, and a sample from each champion."""
    args.dataset, args.name, args.source, args.sha256, args.md5 = "synthetic", None, None, None, None
    args.crop, args.holdout, args.device = DEFAULT_CROP, DEFAULT_HOLDOUT, "cpu"  # flags the demo has not
    args.seeds, args.told = None, set()
    for variant in DEMO_VARIANTS:
        args.mode, args.size = variant.mode, variant.size
        prepare(args)
    for option, value in {**DEMO_TRAINING, "iterations": args.iterations, **DEMO_EVALUATION}.items():
        setattr(args, option, value)
    for variant in DEMO_VARIANTS:
        for arch in ARCHITECTURES:
            args.variant, args.arch = variant.name, arch
            train(args)

    from flower_pipeline.registry import list_models

    champions = sorted({r["name"] for r in list_models(data_dir=args.data_dir)
                        if r["name"].startswith("synthetic-") and "champion" in r["aliases"]})
    print()
    for model in champions:
        args.model, args.alias, args.version, args.n, args.seed, args.dir = model, "champion", None, 64, 0, False
        args.output = DataLayout.at(args.data_dir).demo_grid(model)
        sample(args)
    if not champions:
        print("no version passed the quality gate, so there is no champion to sample from")
    print(f"look: DAGSTER_HOME={shlex.quote(dagster_home())} .venv/bin/dg dev   (Dagster UI)")
    print(f"      .venv/bin/mlflow ui --backend-store-uri sqlite:///{DataLayout.at(args.data_dir).mlflow_db}"
          "   (MLflow UI)")
    print("      .venv/bin/flower-pipeline models   (the registry)")


def models(args: argparse.Namespace) -> None:
    """A table of registered versions with their aliases and key metrics."""
    for name, value in LOOKUP_HTTP.items():
        os.environ.setdefault(name, value)
    import datetime

    from flower_pipeline import metrics
    from flower_pipeline.registry import list_models

    rows = list_models(data_dir=args.data_dir)
    if not rows:
        print("no registered models yet: run `flower-pipeline train` or `flower-pipeline demo`")
        return

    values = [metrics.from_version_tags(r["tags"]) for r in rows]
    columns = [name for name in metrics.SUMMARY if any(name in v for v in values)]  # those some version has
    header = ("MODEL", "VER", "ALIASES", "VARIANT", "ARCH", "ITER", *(metrics.BY_NAME[c].title for c in columns),
              "CREATED (UTC)")
    table = [header] + [(
        r["name"], str(r["version"]), ",".join(r["aliases"]) or "-", r["tags"].get("variant", "-"),
        r["tags"].get("arch", "-"), _iteration(r["tags"]),
        *(metrics.shown(c, v[c]) if c in v else "-" for c in columns),
        datetime.datetime.fromtimestamp(r["created"] / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    ) for r, v in zip(rows, values, strict=True)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _iteration(tags: dict[str, str]) -> str:
    """The registered generator's iteration: of its training's last, when a scored snapshot was chosen."""
    last, chosen = tags.get("iterations", "-"), tags.get("snapshot_iteration")
    return f"{chosen}/{last}" if chosen and chosen != last else last


def sample(args: argparse.Namespace) -> None:
    """Images from a registered generator: one PNG grid, or a folder of PNG files."""
    for name, value in LOOKUP_HTTP.items():
        os.environ.setdefault(name, value)
    from flower_pipeline.plots import grid_png
    from flower_pipeline.registry import load_generator
    from flower_pipeline.storage import atomic_write_bytes, png_bytes

    if not 1 <= args.n <= MAX_SAMPLES:
        raise PipelineError(f"-n must be between 1 and {MAX_SAMPLES:,}, got {args.n}; for more images, run sample "
                            "again with other seeds")
    if not 0 <= args.seed < 2**63:
        raise PipelineError(f"--seed must be between 0 and 2**63 - 1, got {args.seed}")
    generator = load_generator(args.model, alias=args.alias, version=args.version, data_dir=args.data_dir)
    images = generator.generate(args.n, seed=args.seed)
    which = f" v{args.version}" if args.version is not None else f"@{args.alias or 'champion'}"
    try:
        if args.dir:
            for i, image in enumerate(images):
                atomic_write_bytes(args.output / f"{args.model}-{i:04d}.png", png_bytes(image.transpose(1, 2, 0)))
        else:
            atomic_write_bytes(args.output, grid_png(images))
    except OSError as err:  # a folder where a file should go, or the reverse, or no permission
        raise PipelineError(f"cannot write {args.output}: {err.strerror or err}") from None
    where = f" in {args.output}/" if args.dir else f": {args.output}"
    print(f"{len(images)} images from {args.model}{which} (seed {args.seed}){where}")


def stack(args: argparse.Namespace) -> None:
    """The MLflow server, Dagster's daemon and webserver, and Celery workers on this machine."""
    from flower_pipeline.scaleout import stack

    if args.action == "up":
        workers = args.workers if args.workers is not None else max(1, _gpu_count())
        if workers < 1 or args.ingest_concurrency < 1:
            raise PipelineError("--workers and --ingest-concurrency must be at least 1")
        stack.up(workers, args.ingest_concurrency, args.webserver, args.data_dir.resolve(), print)
    elif args.action == "down":
        stack.down(print)
    elif not stack.status(print):
        raise PipelineError("some pieces of the stack are not running; their logs say why")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one `error:` line with a hint, not the whole usage text."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(1, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from flower_pipeline.download import DownloadLimits
    from flower_pipeline.evaluation import EvalSettings
    from flower_pipeline.feature_network import FeatureSettings
    from flower_pipeline.settings import add_flags
    from flower_pipeline.training import TrainConfig

    parser = OneLineParser(prog="flower-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--data-dir", type=Path, default=None,
                         help="where datasets, caches and models are written (default $FLOWER_PIPELINE_DATA_DIR, "
                              "else data/ beside the Dagster home: one data root per instance)")
        return sub

    p = with_data_dir(commands.add_parser("prepare", help="download, extract, resize and cache a dataset variant"))
    p.add_argument("--dataset", required=True, choices=(*CATALOGUED, CUSTOM),
                   help="a catalogued dataset, or custom for your own photos (with --name)")
    p.add_argument("--name", help="your collection's name (with --dataset custom), e.g. roses")
    p.add_argument("--source", help="mirror URL, local archive, or (custom) a folder of images")
    checksum = p.add_mutually_exclusive_group()
    checksum.add_argument("--sha256", help="expected sha256 of --source")
    checksum.add_argument("--md5", help="expected md5 of --source")
    p.add_argument("--mode", choices=MODES, default="color", help="colour or black-and-white (default color)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels: 16 to 512, a power of two (64)")
    p.add_argument("--crop", choices=CROPS, default=DEFAULT_CROP)
    p.add_argument("--holdout", type=float, default=DEFAULT_HOLDOUT,
                   help=f"share held out for evaluation (default {DEFAULT_HOLDOUT})")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="for the feature network: auto, cpu, cuda or cuda:N")
    add_flags(p, FeatureSettings, prefix="feature_net_")
    add_flags(p, DownloadLimits, prefix="download_")
    p.set_defaults(run=prepare)

    p = with_data_dir(commands.add_parser("train", help="train, evaluate and register one variant × architecture"))
    p.add_argument("--variant", required=True, help="a prepared variant, e.g. flowers17-gray-64")
    p.add_argument("--arch", required=True, choices=tuple(ARCHITECTURES))
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (CUDA when present), cpu, cuda or cuda:N")
    add_flags(p, TrainConfig, skip=("arch",))
    p.add_argument("--seeds", help="a seed sweep, e.g. 0-7 or 0,3,5: trained side by side in one fused step, "
                                   "each evaluated, only the best registered (through the usual gate and ranking)")
    add_flags(p, EvalSettings, prefix="eval_")
    p.set_defaults(run=train)

    p = with_data_dir(commands.add_parser("demo", help="run the main job on the built-in synthetic data"))
    p.add_argument("--iterations", type=int, default=DEMO_TRAINING["iterations"],
                   help=f"training steps per architecture (default {DEMO_TRAINING['iterations']})")
    p.set_defaults(run=demo)

    study_parser = commands.add_parser("study", help="run the source's study (or your own) and report on its claims")
    study_commands = study_parser.add_subparsers(dest="study_command", required=True)
    p = with_data_dir(study_commands.add_parser("run", help="train and evaluate every run of a study, resuming"))
    p.add_argument("study", help="a study name (flower-pipeline study list) or a study file")
    p.add_argument("--profile", default="quick", help="quick (32 px, short, CPU) or full (the source's settings)")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--only", nargs="+", metavar="LABEL",
                   help="only these runs, each with the rest of its fused group (another group is another run)")
    p.add_argument("--yes", action="store_true", help="start the full profile on a CPU all the same")
    p.add_argument("--register", action="store_true",
                   help="register each run's generator in the model registry (may move champions)")
    p.add_argument("--no-fuse", action="store_true",
                   help="train every run on its own (default: runs that differ only in fusable settings, seeds "
                        "included, train side by side as one model, one step for each group)")
    p.add_argument("--parallel", type=int, default=0, metavar="N",
                   help="on a CPU, fused groups trained at once, each on one thread (default 0: one per core); "
                        "on a GPU always one")
    p.set_defaults(run=study.run_study)
    p = with_data_dir(study_commands.add_parser("report", help="write the study's HTML report"))
    p.add_argument("study", help="a study name or a study file")
    p.add_argument("--profile", default="quick")
    p.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write")
    p.add_argument("--findings", type=Path, help="also write the findings (verdicts, margins, seeds' values) as "
                                                 "JSON here, e.g. docs/findings/source-quick.json")
    p.set_defaults(run=study.write_report)
    p = with_data_dir(study_commands.add_parser("list", help="the studies and each run's state"))
    p.set_defaults(run=study.list_studies)

    p = with_data_dir(commands.add_parser("models", help="list registered generators, their aliases and metrics"))
    p.set_defaults(run=models)

    p = with_data_dir(commands.add_parser("sample", help="make images with a registered generator"))
    p.add_argument("--model", required=True, help="registered model name, e.g. flowers17-color-64-arch1")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--alias", help="model alias (default champion)")
    which.add_argument("--version", type=int, help="model version number")
    p.add_argument("-n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--grid", action="store_true", help="one PNG grid at -o (the default)")
    layout.add_argument("--dir", action="store_true", help="one PNG per image in the folder -o")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG file (grid) or folder (--dir)")
    p.set_defaults(run=sample)

    p = with_data_dir(commands.add_parser(
        "stack", help="start, stop or list the scale-out pieces on this machine (docs/operations.md, Scaling out)"))
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--workers", type=int, default=None,
                   help="GPU workers, one per GPU (default: this machine's GPU count, at least 1)")
    p.add_argument("--ingest-concurrency", type=int, default=2, help="steps at once on the ingest worker (2)")
    p.add_argument("--webserver", default="http://127.0.0.1:3000", help="the UI's address (http://127.0.0.1:3000)")
    p.set_defaults(run=stack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a bad argument already explained in one line
        return int(done.code or 0)
    if args.data_dir is None:  # the instance's data root, wherever the command runs
        from flower_pipeline.layout import default_data_dir

        dagster_home()
        args.data_dir = default_data_dir()
    try:
        args.data_dir = Path(args.data_dir).resolve()
    except (RuntimeError, OSError) as err:  # a symlink loop
        print(f"error: the data folder {printable(str(args.data_dir))} cannot be used: {printable(str(err))}",
              file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore")  # Dagster's preview/beta notices are not for this terminal
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # else importing MLflow resets the level below
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one model file: no bar needed
    for noisy in ("dagster", "mlflow", "alembic"):  # their INFO lines are for the UIs, not this terminal
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from flower_pipeline.scaleout.settings import read_secret_files

        read_secret_files()
        args.run(args)
    except PipelineError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 1
    except OSError as err:  # a read-only Dagster home, a symlink loop, a full disk: where the system said no
        print(f"error: {printable(os_error_line(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a library's own failure (a broken dagster.yaml, a database down): still one line
        print(f"error: {printable(unexpected_line(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
