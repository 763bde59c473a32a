"""The known-answer tables of both feature spaces on the real Flowers-17 photos, over seeds and thread counts.

The suite's known-answer tests (tests/system/test_real_flowers17.py) bound each measure; this prints the spread
those bounds are set from: the flowers feature network trained with seeds 0-2 at 1 and 2 threads, and the known sets
(collapse, noise, tiles) drawn with seeds 0-2; EfficientNet needs no training, so only the sets vary.

    OMP_NUM_THREADS=1 python benchmarks/known_answers.py [--size 32] [--data /tmp/known-answers]

`--repeats` prints instead the repeated-mode and sharpness measures on distinct-but-damaged and repeated sets
(`repeat_and_damage_sets`, drawn with seeds 0-2): the table in docs/design.md, "Repeated modes" and "Sharpness".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FLOWERS17_TGZ, real_flowers17

from flower_pipeline.effnet import Effnet, duplicate_ratio, effnet_measures, repeated_mode
from flower_pipeline.evaluation import edge_distance, high_frequency_ratio
from flower_pipeline.feature_network import (
    FeatureSettings,
    flower_features,
    flowers_measures,
    known_answer_sets,
    load_feature_network,
    repeat_and_damage_sets,
    train_feature_network,
)

MEASURES = ("fd_flowers", "kd_flowers", "precision", "recall", "fd_effnet", "kd_effnet", "precision_effnet",
            "recall_effnet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=Path("/tmp/known-answers"))
    parser.add_argument("--repeats", action="store_true", help="the repeated-mode and sharpness measures' table")
    args = parser.parse_args()
    if not FLOWERS17_TGZ.is_file():
        sys.exit(f"error: {FLOWERS17_TGZ} is not present")
    cache = real_flowers17(args.data, args.size)
    train_images, holdout = cache.train_images(), cache.holdout_images()
    if args.repeats:
        repeats_table(train_images, holdout)
        return
    effnet = Effnet()
    effnet_train = effnet.features(train_images)
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in range(3):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            result = train_feature_network(cache, FeatureSettings(seed=seed), args.data / f"net-{seed}-{threads}")
            network = load_feature_network(result.path)
            real = flower_features(network, train_images)
            for name, images in known_answer_sets(train_images, holdout, seed).items():
                row = rows.setdefault(name, {m: [] for m in MEASURES})
                for key, value in flowers_measures(real, flower_features(network, images)).items():
                    row[key].append(value)
                if threads == 1:  # the pretrained space does not depend on the network's seed or threads
                    for key, value in effnet_measures(effnet_train, effnet.features(images)).items():
                        row[key].append(value)
            print(f"seed {seed}, {threads} thread(s): held-out accuracy {result.accuracy:.3f}", flush=True)
    print(f"\n{'set':<22}" + "".join(f"{m:>26}" for m in MEASURES))
    for name, row in rows.items():
        cells = [f"{np.mean(v):.4g} [{np.min(v):.3g}, {np.max(v):.3g}]" for v in row.values()]
        print(f"{name:<22}" + "".join(f"{c:>26}" for c in cells))


def repeats_table(train_images: np.ndarray, holdout: np.ndarray) -> None:
    effnet = Effnet()
    reference = effnet.features(train_images).stage5
    measures = ("duplicate_ratio", "mode_share_ratio", "edge_distance", "high_frequency_ratio")
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in range(3):
        for name, images in repeat_and_damage_sets(train_images, holdout, seed).items():
            features = effnet.features(images).stage5
            row = rows.setdefault(name, {m: [] for m in measures})
            row["duplicate_ratio"].append(duplicate_ratio(reference, features, seed=seed)["duplicate_ratio"])
            row["mode_share_ratio"].append(repeated_mode(reference, features, seed=seed)[0]["mode_share_ratio"])
            row["edge_distance"].append(edge_distance(train_images, images))
            row["high_frequency_ratio"].append(high_frequency_ratio(train_images, images))
    print(f"| set | {' | '.join(measures)} |\n|---|" + "---|" * len(measures))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{np.mean(v):.3g} [{np.min(v):.3g}, {np.max(v):.3g}]"
                                          for v in row.values()) + " |")


if __name__ == "__main__":
    main()
