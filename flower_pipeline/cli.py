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
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from flower_pipeline.catalog import DATASET_NAMES
from flower_pipeline.errors import PipelineError

QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


PROJECT_DAGSTER_HOME = Path(__file__).resolve().parents[1] / "dagster_home"


def _instance() -> Any:
    """The instance at $DAGSTER_HOME, else the project's own dagster_home/ (a source checkout)."""
    import dagster as dg

    fallback = PROJECT_DAGSTER_HOME if PROJECT_DAGSTER_HOME.is_dir() else Path("dagster_home").resolve()
    Path(os.environ.setdefault("DAGSTER_HOME", str(fallback))).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def materialize(assets: Sequence[Any], partition_key: str, run_config: dict[str, Any], data_dir: Path) -> Any:
    """Materialize `assets` for one partition in the project's Dagster instance."""
    import dagster as dg

    from flower_pipeline.defs.mlflow_tracking import MlflowTracking
    from flower_pipeline.defs.resources import FlowerStorage

    result = dg.materialize(
        assets, partition_key=partition_key, instance=_instance(),
        resources={"storage": FlowerStorage(data_dir=str(data_dir)),
                   "mlflow": MlflowTracking(data_dir=str(data_dir))},
        run_config={**QUIET_LOGGERS, "ops": run_config}, raise_on_error=False,
    )
    if not result.success:
        raise PipelineError(_failure_message(result))
    return result


def _failure_message(result: Any) -> str:
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return data.user_failure_data.description
        error = data.error
        while error is not None and error.cause is not None:  # the user code's own exception
            error = error.cause
        if error is not None:
            return f"{event.step_key} failed: {error.message.strip().splitlines()[0]}"
    return "the run failed; see the Dagster UI for its log"


def prepare(args: argparse.Namespace) -> None:
    from flower_pipeline.defs import ingest as assets

    run_config = {
        "raw_archive": {"config": {"source": args.source, "sha256": args.sha256, "md5": args.md5}},
        "resized_images": {"config": {"size": args.size, "mode": args.mode, "crop": args.crop}},
        "tensor_cache": {"config": {"holdout_fraction": args.holdout}},
    }
    materialize([assets.raw_archive, assets.extracted_images, assets.resized_images, assets.tensor_cache],
                args.dataset, run_config, args.data_dir)
    _report_prepared(args.data_dir, args.dataset)


def _report_prepared(data_dir: Path, dataset: str) -> None:
    from flower_pipeline.ingest import DatasetPaths

    manifest = DatasetPaths(data_dir.resolve(), dataset).read_manifest("tensor_cache")
    n, c, h, w = manifest["shape"]
    print(f"{dataset}: {n} images ({c}×{h}×{w}) in {len(manifest['class_counts'])} classes")
    print(f"tensor cache: {manifest['path']}")
    skipped = manifest["skipped"]
    print(f"skipped: {len(skipped)}" + "".join(f"\n  {name}: {why}" for name, why in sorted(skipped.items())))


def train(args: argparse.Namespace) -> None:
    """Train, evaluate and register one dataset × architecture (the retraining job's three assets)."""
    from flower_pipeline.defs.evaluation import EvaluationConfig, generator_evaluation
    from flower_pipeline.defs.partitions import training_partition_key
    from flower_pipeline.defs.registry import registered_generator
    from flower_pipeline.defs.training import TrainingConfig, trained_generator

    training = {k: v for k in TrainingConfig.model_fields if (v := getattr(args, k)) is not None}
    evaluation = {k: v for k in EvaluationConfig.model_fields
                  if k != "device" and (v := getattr(args, f"eval_{k}")) is not None}
    evaluation["device"] = training.get("device", "auto")
    result = materialize([trained_generator, generator_evaluation, registered_generator],
                         training_partition_key(args.dataset, args.arch),
                         {"trained_generator": {"config": training}, "generator_evaluation": {"config": evaluation}},
                         args.data_dir)

    def meta(node: str) -> dict[str, Any]:
        return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}

    trained, evaluated, registered = meta("trained_generator"), meta("generator_evaluation"), meta(
        "registered_generator")
    print(f"{args.dataset} × {args.arch}: {trained['iterations']} iterations in {trained['seconds']} s "
          f"on {trained['device']}; outputs in {trained['path']}")
    fid = evaluated["fid"]
    print(f"  held-out D(x) {evaluated['d_real_holdout_mean']:.3f}, D(G(z)) {evaluated['d_fake_mean']:.3f}, "
          f"FID {'n/a' if isinstance(fid, str) else f'{fid:.1f}'}, colour coverage "
          f"{evaluated['colour_coverage']:.2f}, near-copies {evaluated['near_copy_share_pixels']:.0%}")
    if isinstance(fid, str):
        print(f"  FID and KID {fid}")
    print(f"  {registered['model']} v{registered['version']}: {registered['promotion']} ({registered['reason']})")


# A CPU-sized schedule: the demo proves every step works, it does not make good flowers.
DEMO_TRAINING = {"iterations": 300, "features": 16, "batch_size": 16, "log_every": 50,
                 "sample_every": 50, "device": "cpu"}
DEMO_EVALUATION = {"eval_samples": 256}


def demo(args: argparse.Namespace) -> None:
    """Everything on the synthetic data: ingest, both architectures, evaluation, registry, a sample."""
    from flower_pipeline.defs.evaluation import EvaluationConfig
    from flower_pipeline.defs.training import TrainingConfig

    args.dataset, args.source, args.sha256, args.md5 = "synthetic", None, None, None
    args.size, args.mode, args.crop, args.holdout = 64, "color", "center", 0.1
    prepare(args)
    for option in TrainingConfig.model_fields:
        setattr(args, option, {**DEMO_TRAINING, "iterations": args.iterations}.get(option))
    for option in EvaluationConfig.model_fields:
        setattr(args, f"eval_{option}", DEMO_EVALUATION.get(f"eval_{option}"))
    for arch in ("arch1", "arch2"):
        args.arch = arch
        train(args)

    from flower_pipeline.registry import list_models

    champions = [r["name"] for r in list_models(data_dir=args.data_dir)
                 if r["name"].startswith("synthetic-") and "champion" in r["aliases"]]
    print()
    if champions:
        args.model, args.alias, args.version, args.n, args.seed, args.dir = champions[0], "champion", None, 64, 0, False
        args.output = args.data_dir / "demo-samples.png"
        sample(args)
    else:
        print("no version passed the quality gate, so there is no champion to sample from")
    print("look: DAGSTER_HOME=$PWD/dagster_home .venv/bin/dagster dev -w workspace.yaml   (Dagster UI)")
    print(f"      .venv/bin/mlflow ui --backend-store-uri sqlite:///{(args.data_dir / 'mlflow.db').resolve()}"
          "   (MLflow UI)")
    print("      .venv/bin/flower-pipeline models   (the registry)")


def models(args: argparse.Namespace) -> None:
    """A table of registered versions with their aliases and key metrics."""
    import datetime

    from flower_pipeline.registry import list_models

    rows = list_models(data_dir=args.data_dir)
    if not rows:
        print("no registered models yet: run `flower-pipeline train` or `flower-pipeline demo`")
        return

    def metric(tags: dict[str, str], key: str, digits: int) -> str:
        value = tags.get(f"eval.{key}")
        return f"{float(value):.{digits}f}" if value is not None else "-"

    header = ("MODEL", "VER", "ALIASES", "DATASET", "ARCH", "FID", "COLOUR DIST", "COVERAGE", "D(x)", "D(G(z))",
              "CREATED (UTC)")
    table = [header] + [(
        r["name"], str(r["version"]), ",".join(r["aliases"]) or "-", r["tags"].get("dataset", "-"),
        r["tags"].get("arch", "-"), metric(r["tags"], "fid", 1), metric(r["tags"], "colour_distance", 3),
        metric(r["tags"], "colour_coverage", 2), metric(r["tags"], "d_real_holdout_mean", 3),
        metric(r["tags"], "d_fake_mean", 3),
        datetime.datetime.fromtimestamp(r["created"] / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M"),
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def sample(args: argparse.Namespace) -> None:
    """Images from a registered generator: one PNG grid, or a folder of PNG files."""
    from flower_pipeline.plots import grid_png
    from flower_pipeline.registry import load_generator
    from flower_pipeline.storage import atomic_write_bytes, png_bytes

    generator = load_generator(args.model, alias=args.alias, version=args.version, data_dir=args.data_dir)
    images = generator.generate(args.n, seed=args.seed)
    which = f"v{args.version}" if args.version is not None else f"@{args.alias or 'champion'}"
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


def add_config_flags(parser: argparse.ArgumentParser, config_class: Any, prefix: str = "",
                     skip: tuple[str, ...] = ()) -> None:
    """One --flag per field of a Dagster config class; unset flags keep the class's default."""
    for name, field in config_class.model_fields.items():
        if name in skip:
            continue
        kind = next(a for a in (*get_args(field.annotation), field.annotation) if a is not type(None))
        default = "the architecture's" if field.default is None else field.default
        options: dict[str, Any] = {"default": None, "help": f"{field.description} (default: {default})"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
        parser.add_argument("--" + (prefix + name).replace("_", "-"), dest=prefix + name, **options)


def build_parser() -> argparse.ArgumentParser:
    from flower_pipeline.defs.evaluation import EvaluationConfig
    from flower_pipeline.defs.training import TrainingConfig

    parser = argparse.ArgumentParser(prog="flower-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--data-dir", type=Path,
                         default=Path(os.environ.get("FLOWER_PIPELINE_DATA_DIR", "data")),
                         help="where datasets, caches and models are written (default ./data)")
        return sub

    p = with_data_dir(commands.add_parser("prepare", help="download, extract, resize and cache a dataset"))
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--source", help="mirror URL, local archive, or (custom) a folder of images")
    checksum = p.add_mutually_exclusive_group()
    checksum.add_argument("--sha256", help="expected sha256 of --source")
    checksum.add_argument("--md5", help="expected md5 of --source")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--mode", choices=("color", "gray"), default="color")
    p.add_argument("--crop", choices=("center", "pad", "stretch"), default="center")
    p.add_argument("--holdout", type=float, default=0.1, help="share held out for evaluation")
    p.set_defaults(run=prepare)

    p = with_data_dir(commands.add_parser("train", help="train, evaluate and register one dataset × architecture"))
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--arch", required=True, choices=("arch1", "arch2"))
    add_config_flags(p, TrainingConfig)
    add_config_flags(p, EvaluationConfig, prefix="eval_", skip=("device",))
    p.set_defaults(run=train)

    p = with_data_dir(commands.add_parser("demo", help="run the main job on the built-in synthetic data"))
    p.add_argument("--iterations", type=int, default=DEMO_TRAINING["iterations"],
                   help=f"training steps per architecture (default {DEMO_TRAINING['iterations']})")
    p.set_defaults(run=demo)

    p = with_data_dir(commands.add_parser("models", help="list registered generators, their aliases and metrics"))
    p.set_defaults(run=models)

    p = with_data_dir(commands.add_parser("sample", help="make images with a registered generator"))
    p.add_argument("--model", required=True, help="registered model name, e.g. flowers17-arch1")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")  # Dagster's preview/beta notices are not for this terminal
    for noisy in ("dagster", "mlflow", "alembic"):  # their INFO lines are for the UIs, not this terminal
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        args.run(args)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
