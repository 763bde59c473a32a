"""Scored snapshots on real data: how often the best snapshot is not the last, by how much it beats the last in
each feature space, and what scoring costs beside training.

It runs `flower-pipeline train` (the retraining job, through the instance) with a seed sweep and eval_every, then
reads the evaluation's record and writes the findings (JSON, and the curve of seed 0) that docs/findings.md
quotes; tests/unit/test_findings.py fails when the quote and the file differ.

    python benchmarks/snapshots.py --variant flowers17-color-64 --arch arch1 --seeds 0-2 --iterations 3000 \
        --eval-every 300 --features 32 --device cpu --findings docs/findings/snapshots
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the findings' summary is read by a unit test, which imports no Dagster
    from flower_pipeline.runs import Evaluation

SPACES = ("fd_effnet", "fd_flowers")


def findings(evaluation: Evaluation) -> dict[str, Any]:
    """Per seed: the last and the best snapshot in each feature space, and scoring's cost beside training."""
    seeds = []
    for member in sorted((evaluation, *evaluation.sweep), key=lambda e: e.training.config["seed"]):
        last = member.snapshots[-1]
        row: dict[str, Any] = {"seed": member.training.config["seed"], "iterations": last.iteration,
                               "registered_iteration": member.iteration or last.iteration,
                               "training_seconds": round(member.training.seconds, 1),
                               "scoring_seconds": round(member.scoring_seconds, 1)}
        for space in SPACES:
            best = min(member.snapshots, key=lambda s: (s.metrics[space], -s.iteration))
            row[space] = {"best_iteration": best.iteration, "best": round(best.metrics[space], 4),
                          "last": round(last.metrics[space], 4),
                          "best_below_last": round(1 - best.metrics[space] / last.metrics[space], 4)}
        seeds.append(row)
    return {"variant": evaluation.training.variant, "arch": evaluation.training.arch,
            "device": evaluation.training.device, "eval_every": evaluation.training.config["eval_every"],
            "features": evaluation.training.config["features"],
            "precision": evaluation.training.config["precision"], "snapshots": len(evaluation.snapshots),
            "seeds": seeds}


def summary(found: dict[str, Any]) -> str:
    """The findings as docs/findings.md quotes them."""
    seeds, lines = found["seeds"], []
    for space in SPACES:
        earlier = [s for s in seeds if s[space]["best_iteration"] < s["iterations"]]
        gains = ", ".join(f"seed {s['seed']}: iteration {s[space]['best_iteration']}, "
                          f"{100 * s[space]['best_below_last']:.0f}% below the last" for s in seeds)
        lines.append(f"- {space}: the best snapshot is not the last in {len(earlier)} of {len(seeds)} seeds ({gains})")
    # A sweep's seeds train side by side: its wall time is the group's, counted once.
    scoring, training = sum(s["scoring_seconds"] for s in seeds), max(s["training_seconds"] for s in seeds)
    lines.append(f"- scoring {found['snapshots']} generators a seed (every {found['eval_every']} iterations and the "
                 f"last) took {scoring:.0f} s beside {training:.0f} s of training: {100 * scoring / training:.1f}% of "
                 "its wall time")
    return "\n".join(lines)


def main() -> int:
    from flower_pipeline.cli.main import main as cli
    from flower_pipeline.defs.partitions import training_key
    from flower_pipeline.layout import DataLayout
    from flower_pipeline.plots import snapshot_curve_png
    from flower_pipeline.records import read_record
    from flower_pipeline.runs import snapshot_ranking

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True)
    parser.add_argument("--arch", default="arch1")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--features", type=int, default=32, help="network width (32: the beyond study's cpu64)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--findings", type=Path, help="a folder: <variant>-<arch>.json and its curve go there")
    parser.add_argument("--no-train", action="store_true", help="only read the evaluation already made")
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.no_train:
        code = cli(["train", "--variant", args.variant, "--arch", args.arch, "--seeds", args.seeds,
                    "--iterations", str(args.iterations), "--eval-every", str(args.eval_every),
                    "--features", str(args.features),
                    "--device", args.device, "--data-dir", str(args.data_dir)])
        if code:
            return code
    layout = DataLayout(args.data_dir.resolve())
    record = layout.stage_record(["generator_evaluation"], str(training_key(args.variant, args.arch)))
    found = findings(read_record(record, layout.root))
    print(json.dumps(found, indent=1))
    print(summary(found))
    print(f"{time.perf_counter() - started:.0f} s in all")
    if args.findings:
        args.findings.mkdir(parents=True, exist_ok=True)
        name = f"{args.variant}-{args.arch}"
        (args.findings / f"{name}.json").write_text(json.dumps(found, indent=1) + "\n")
        evaluation = read_record(record, layout.root)
        first = min((evaluation, *evaluation.sweep), key=lambda e: e.training.config["seed"])
        curve = snapshot_curve_png([(s.iteration, s.metrics) for s in first.snapshots],
                                   first.iteration or first.training.iterations,
                                   snapshot_ranking(first.snapshots, first.feature_network),
                                   title=f"{name}, seed {first.training.config['seed']}: scored snapshots")
        (args.findings / f"{name}.png").write_bytes(curve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
