"""Every evaluation metric, declared once: its name, title, direction and where it is shown.

The MLflow keys, the Dagster metadata, the registry's version tags and
description, the `models` table and the study report all read this table, so a
metric added here (and computed in `evaluation.py`) appears wherever its peers do.

- `headline`: shown in the Dagster UI and carried as a version tag (the champion's
  numbers are read back from those tags);
- `summary`: one of the few columns of the `models` table, the version description
  and the study report's runs table;
- `gate`: the evaluation setting holding its quality-gate limit (`max_fid`): a champion must be at most it
  (lower is better) or at least it (higher is better); the gate, its asset check's description and the
  evaluation config's help all read it;
- `rank` and `space`: the registry ranks versions by the first ranked metric every version has (1 first),
  comparing a metric measured in a feature space (`space`, a version tag) only between versions of one space;
- `terminal`, `progress`: on `train`'s result line, on `study run`'s line for each finished run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOWER, HIGHER, HALF = "lower", "higher", "0.5"  # what is better: less, more, or 0.5 (D cannot tell)


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    better: str | None  # LOWER, HIGHER, HALF, or None where neither direction is better
    headline: bool = False
    summary: bool = False
    digits: int = 4  # significant digits where shown
    gate: str | None = None  # the EvalSettings field of its quality-gate limit
    rank: int | None = None  # its place in the registry's ranking (lower is better for every ranked metric)
    space: str | None = None  # the version tag naming the feature space it was measured in
    terminal: bool = False
    progress: bool = False

    @property
    def gate_op(self) -> str:
        """How a value must compare with its gate limit: "<=" when lower is better, ">=" when higher is."""
        return "<=" if self.better == LOWER else ">="


FEATURE_NETWORK = "feature_network"  # version tag: the id of the network its fd_flowers was measured with
EFFNET_SPACE = "effnet_space"  # version tag: the EfficientNet set-up its fd_effnet was measured in
SPACE_TAGS = (FEATURE_NETWORK, EFFNET_SPACE)


METRICS: tuple[Metric, ...] = (
    # The source's measure: D's scores, scored as D was trained.
    Metric("d_real_train_mean", "D(x) train", HALF, headline=True, summary=True, digits=3, terminal=True),
    Metric("d_real_holdout_mean", "D(x) held-out", HALF, headline=True, summary=True, digits=3,
           terminal=True),
    Metric("d_real_gap", "D(x) gap", LOWER, headline=True),
    Metric("d_fake_mean", "D(G(z))", HALF, headline=True, summary=True, digits=3, terminal=True),
    Metric("d_real_holdout_std", "D(x) held-out sd", None, headline=True),
    Metric("d_real_train_std", "D(x) train sd", None),
    Metric("d_fake_std", "D(G(z)) sd", None, headline=True),
    # The project's offline measure, in the variant's feature network's space.
    Metric("fd_flowers", "fd_flowers", LOWER, headline=True, summary=True, gate="max_fd_flowers", rank=3,
           space=FEATURE_NETWORK, terminal=True, progress=True),
    Metric("kd_flowers", "kd_flowers", LOWER, headline=True),
    Metric("precision", "precision", HIGHER, headline=True, summary=True, terminal=True),
    Metric("recall", "recall", HIGHER, headline=True, summary=True, gate="min_recall", terminal=True,
           progress=True),
    # The standard space (ImageNet EfficientNet-Lite0): one for every variant, so it compares across them.
    Metric("fd_effnet", "fd_effnet", LOWER, headline=True, summary=True, rank=2, space=EFFNET_SPACE,
           terminal=True),
    Metric("kd_effnet", "kd_effnet", LOWER, headline=True),
    Metric("precision_effnet", "precision (effnet)", HIGHER, headline=True),
    Metric("recall_effnet", "recall (effnet)", HIGHER, headline=True),
    # Repeated modes, in the same space: near-duplicate pairs among the samples against those among the photos
    # (about 1 for distinct images, damaged or not); and the most over-represented cluster of the photos'
    # features, which any damage also raises (docs/design.md, "Repeated modes").
    Metric("duplicate_ratio", "near-duplicate ratio", LOWER, headline=True, summary=True, digits=3),
    Metric("duplicate_share", "near-duplicate share", None, headline=True, digits=3),
    Metric("mode_share_ratio", "mode share ratio", LOWER, headline=True, digits=3, gate="max_mode_share_ratio"),
    Metric("mode_share", "mode share", None, headline=True, digits=3),
    # FID and KID, where Inception weights exist.
    Metric("fid", "FID", LOWER, headline=True, summary=True, digits=4, gate="max_fid", rank=1, terminal=True),
    Metric("kid_mean", "KID", LOWER, headline=True, summary=True),
    Metric("kid_std", "KID sd", None, headline=True),
    Metric("kid_subset_size", "KID subset size", None),
    # Mode collapse and colour.
    Metric("colour_distance", "colour distance", LOWER, headline=True, summary=True, digits=3, rank=4),
    Metric("colour_coverage", "colour coverage", HIGHER, headline=True, summary=True, digits=2,
           gate="min_colour_coverage", terminal=True),
    Metric("generated_colour_clusters", "generated colour clusters", HIGHER, headline=True),
    Metric("colour_clusters", "real colour clusters", None, headline=True),
    # Sharpness: the edges' distribution against the photos' (0: like them); the high-frequency energy ratio also
    # rises with noise and checkerboards, so no claim reads it alone (docs/design.md, "Sharpness").
    Metric("edge_distance", "edge distance", LOWER, headline=True, summary=True, digits=3),
    Metric("high_frequency_ratio", "high-freq. ratio", None),
    Metric("checkerboard_ratio", "checkerboard", LOWER, headline=True, summary=True),
    Metric("blockiness_ratio", "blockiness", LOWER, headline=True, summary=True),
    # Memorization, in pixels and (with Inception weights) in feature space.
    Metric("near_copy_share_pixels", "near-copies", LOWER, headline=True, summary=True,
           gate="max_near_copy_share", terminal=True),
    Metric("memorization_ratio_pixels", "memorization ratio (pixels)", HIGHER, headline=True),
    Metric("nearest_train_distance_pixels", "nearest training distance (pixels)", None),
    Metric("holdout_nearest_train_distance_pixels", "held-out nearest training distance (pixels)", None),
    Metric("near_copy_share_inception", "near-copies (Inception)", LOWER, headline=True),
    Metric("memorization_ratio_inception", "memorization ratio (Inception)", HIGHER, headline=True),
    Metric("nearest_train_distance_inception", "nearest training distance (Inception)", None),
    Metric("holdout_nearest_train_distance_inception", "held-out nearest training distance (Inception)", None),
)
# The named colour families (colours.FAMILIES): the share of samples, and of the photos, in each.
COLOUR_FAMILY_PREFIXES = ("share_", "real_share_")

BY_NAME = {m.name: m for m in METRICS}
HEADLINE = tuple(m.name for m in METRICS if m.headline)
SUMMARY = tuple(m.name for m in METRICS if m.summary)
GATED = tuple(m for m in METRICS if m.gate)
RANKING = tuple(sorted((m for m in METRICS if m.rank), key=lambda m: m.rank))  # fid, fd_effnet, fd_flowers, …
# Measured together: one reason says why all of a group is unavailable.
FLOWERS_MEASURES = ("fd_flowers", "kd_flowers", "precision", "recall")
EFFNET_MEASURES = ("fd_effnet", "kd_effnet", "precision_effnet", "recall_effnet", "mode_share_ratio", "mode_share",
                   "duplicate_ratio", "duplicate_share")
INCEPTION_MEASURES = ("fid", "kid_mean", "near_copy_share_inception")

RUN_METRIC_PREFIX = "eval_"  # an evaluation metric on an MLflow run: eval_fid
VERSION_TAG_PREFIX = "eval."  # the same metric as a registered version's tag: eval.fid


def known(name: str) -> bool:
    """Whether `name` is a declared metric (colour family shares are declared by prefix)."""
    return name in BY_NAME or name.startswith(COLOUR_FAMILY_PREFIXES)


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The headline metrics present, in declaration order."""
    return {name: metrics[name] for name in HEADLINE if name in metrics}


def run_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Every finite metric under its MLflow run key."""
    return {RUN_METRIC_PREFIX + k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def version_tags(metrics: dict[str, float]) -> dict[str, str]:
    """The headline metrics as registered version tags (read back by `from_version_tags`)."""
    return {VERSION_TAG_PREFIX + k: repr(float(v)) for k, v in headline(metrics).items()}


def from_version_tags(tags: dict[str, str]) -> dict[str, float]:
    return {k.removeprefix(VERSION_TAG_PREFIX): float(v) for k, v in tags.items() if k.startswith(VERSION_TAG_PREFIX)}


def shown(name: str, value: float) -> str:
    """A metric's value as people read it: its declared significant digits."""
    return f"{value:.{BY_NAME[name].digits if name in BY_NAME else 4}g}"


def summary_line(metrics: dict[str, float]) -> str:
    """The summary metrics present, "fid 41.2, recall 0.31, …" (the version description)."""
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in SUMMARY if k in metrics)


def gate_description() -> str:
    """What the quality gate checks, for its asset check and the docs, from the declared gates."""
    limits = ", ".join(m.title for m in GATED)
    return (f"{limits} within the configured limits (each only where measured and limited), and D's scores in "
            "(0, 1); a version that fails is registered but never promoted to champion.")


def terminal_line(metrics: dict[str, float], unavailable: dict[str, str], flag: str = "terminal") -> str:
    """A terminal line: each metric with `flag` set (terminal, progress), in its declared digits, "n/a" where
    it was not measured."""
    return ", ".join(f"{m.title} {shown(m.name, metrics[m.name]) if m.name in metrics else 'n/a'}"
                     for m in METRICS if getattr(m, flag) and (m.name in metrics or m.name in unavailable))
