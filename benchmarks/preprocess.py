"""Preprocessing benchmark: the pipeline's resize path vs a plain single-core loop.

Both decode and resize the real Flowers-17 JPEGs to 64×64 in the same run,
interleaved and repeated (best of N each), and the ratio is printed: quote the
ratio, not the times, since shared machines are noisy.

    python benchmarks/preprocess.py [--archive ../shared/datasets/17flowers.tgz] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2

from flower_pipeline.extract import extract_archive
from flower_pipeline.imaging import ResizeSpec, resize_all

DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "17flowers.tgz"


def plain_loop(paths: list[Path], size: int) -> None:
    """The reference: full decode with cv2.imread and cv2.resize, one core."""
    for path in paths:
        cv2.resize(cv2.imread(str(path)), (size, size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"error: {args.archive} not found (pass --archive)")

    with tempfile.TemporaryDirectory() as tmp:
        root = extract_archive(args.archive, Path(tmp) / "x", archive_sha256="bench").root
        paths = sorted(root.rglob("*.jpg"))
        spec = ResizeSpec(size=args.size)
        pipeline_best = plain_best = float("inf")
        cv2.setNumThreads(1)
        plain_loop(paths[:50], args.size)  # warm the page cache and the decoder
        for _ in range(args.repeats):
            start = time.perf_counter()
            resize_all(paths, spec)
            pipeline_best = min(pipeline_best, time.perf_counter() - start)
            start = time.perf_counter()
            plain_loop(paths, args.size)
            plain_best = min(plain_best, time.perf_counter() - start)

    n = len(paths)
    print(f"images: {n} ({args.archive.name}) -> {args.size}x{args.size}, cores: {os.cpu_count()}")
    print(f"plain loop (cv2.imread full decode + resize, 1 core): {n / plain_best:8.0f} images/s")
    print(f"pipeline (reduced JPEG decode, crop, all cores):      {n / pipeline_best:8.0f} images/s")
    print(f"ratio: {plain_best / pipeline_best:.2f}x")


if __name__ == "__main__":
    main()
