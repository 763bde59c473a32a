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
    import dagster as dg

    from flower_pipeline.defs.training import TrainingConfig, trained_generator

    config = {k: v for k in TrainingConfig.model_fields if (v := getattr(args, k)) is not None}
    result = materialize([trained_generator], dg.MultiPartitionKey({"dataset": args.dataset, "arch": args.arch}),
                         {"trained_generator": {"config": config}}, args.data_dir)
    meta = result.asset_materializations_for_node("trained_generator")[0].metadata
    print(f"{args.dataset} × {args.arch}: {meta['iterations'].value} iterations in {meta['seconds'].value} s "
          f"on {meta['device'].value}; D(x) {meta['d_real'].value:.3f}, D(G(z)) {meta['d_fake'].value:.3f}")
    print(f"outputs: {meta['path'].value}")
    print(f"MLflow run: {meta['mlflow_run_id'].value}")


# A CPU-sized schedule: the demo proves every step works, it does not make good flowers.
DEMO_TRAINING = {"iterations": 300, "features": 16, "batch_size": 16, "log_every": 50,
                 "sample_every": 100, "checkpoint_every": 100}


def demo(args: argparse.Namespace) -> None:
    args.dataset, args.source, args.sha256, args.md5 = "synthetic", None, None, None
    args.size, args.mode, args.crop, args.holdout = 64, "color", "center", 0.1
    prepare(args)
    from flower_pipeline.defs.training import TrainingConfig

    for option in TrainingConfig.model_fields:
        setattr(args, option, DEMO_TRAINING.get(option))
    args.device = "cpu"
    for arch in ("arch1", "arch2"):
        args.arch = arch
        train(args)
    print("look: DAGSTER_HOME=$PWD/dagster_home dagster dev -w workspace.yaml   (Dagster UI)")
    print(f"      mlflow ui --backend-store-uri sqlite:///{(args.data_dir / 'mlflow.db').resolve()}   (MLflow UI)")


def add_config_flags(parser: argparse.ArgumentParser, config_class: Any) -> None:
    """One --flag per field of a Dagster config class; unset flags keep the class's default."""
    for name, field in config_class.model_fields.items():
        kind = next(a for a in (*get_args(field.annotation), field.annotation) if a is not type(None))
        default = "the architecture's" if field.default is None else field.default
        options: dict[str, Any] = {"default": None, "help": f"{field.description} (default: {default})"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind
        parser.add_argument("--" + name.replace("_", "-"), **options)


def build_parser() -> argparse.ArgumentParser:
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

    p = with_data_dir(commands.add_parser("train", help="train one dataset × architecture"))
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--arch", required=True, choices=("arch1", "arch2"))
    add_config_flags(p, TrainingConfig)
    p.set_defaults(run=train)

    p = with_data_dir(commands.add_parser("demo", help="run the main job on the built-in synthetic data"))
    p.set_defaults(run=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")  # Dagster's preview/beta notices are not for this terminal
    logging.getLogger("dagster").setLevel(logging.CRITICAL)
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
