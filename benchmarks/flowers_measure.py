"""The offline measure on sets with known answers: prints the table the README quotes.

Trains the variant's feature network (the asset's default settings) on a tensor cache, then measures,
against the training images, the held-out photos, blurred copies, a two-colour collapse and noise.

    python benchmarks/flowers_measure.py data/flowers17/cache/<hash>
"""

import argparse
import tempfile
import time
from pathlib import Path

from flower_pipeline.feature_network import (
    FeatureSettings,
    flower_features,
    flowers_measures,
    known_answer_sets,
    load_feature_network,
    train_feature_network,
)
from flower_pipeline.tensor_cache import TensorCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    args = parser.parse_args()
    cache = TensorCache.load(args.cache)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train_feature_network(cache, FeatureSettings(), Path(out))
        print(f"{cache.variant}: feature network held-out accuracy {result.accuracy:.1%} "
              f"({result.classes} classes), trained in {time.perf_counter() - started:.0f} s")
        network = load_feature_network(result.path)
        train = flower_features(network, cache.train_images())
        print("| set | fd_flowers | kd_flowers | precision | recall |\n|---|---|---|---|---|")
        for name, images in known_answer_sets(cache.train_images(), cache.holdout_images()).items():
            row = flowers_measures(train, flower_features(network, images))
            print(f"| {name} | {row['fd_flowers']:.2f} | {row['kd_flowers']:.4f} | {row['precision']:.2f} | "
                  f"{row['recall']:.2f} |")


if __name__ == "__main__":
    main()
