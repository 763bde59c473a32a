"""The known-answer tables of both feature spaces on the real Flowers-17 photos, over seeds and thread counts.

The suite's known-answer tests (tests/system/test_real_flowers17.py) bound each measure; this prints the spread
those bounds are set from: the flowers feature network trained with seeds 0-2 at 1 and 2 threads, and the known sets
(collapse, noise, tiles) drawn with seeds 0-2; EfficientNet needs no training, so only the sets vary.

    OMP_NUM_THREADS=1 python benchmarks/known_answers.py [--size 32] [--data /tmp/known-answers]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FLOWERS17_TGZ, real_flowers17

from flower_pipeline.effnet import Effnet, effnet_measures
from flower_pipeline.feature_network import (
    FeatureSettings,
    flower_features,
    flowers_measures,
    known_answer_sets,
    load_feature_network,
    train_feature_network,
)

MEASURES = ("fd_flowers", "kd_flowers", "precision", "recall", "fd_effnet", "kd_effnet", "precision_effnet",
            "recall_effnet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=Path("/tmp/known-answers"))
    args = parser.parse_args()
    if not FLOWERS17_TGZ.is_file():
        sys.exit(f"error: {FLOWERS17_TGZ} is not present")
    cache = real_flowers17(args.data, args.size)
    train_images, holdout = cache.train_images(), cache.holdout_images()
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


if __name__ == "__main__":
    main()
