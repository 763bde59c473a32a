"""Every claim's rule has known answers: constructed seeds that must support it, others that must refute it, and
one seed a run, which must leave it inconclusive. A rule that no input can fail (or pass) fails here."""

import numpy as np
import pytest

from flower_pipeline.study import judge, load_study
from flower_pipeline.verdicts import Evidence, above, base_label, below, decide, equivalent, higher, interval, lower

STUDY = load_study("source")
FULL = STUDY.plan("full")  # every dataset: every claim can be measured
# A neutral study: every run alike. Each claim's overrides below make it hold or fail.
NEUTRAL = {"fd_flowers": 30.0, "recall": 0.3, "near_copy_share_pixels": 0.0, "d_real_train_mean": 0.5,
           "d_fake_mean": 0.5, "d_real_holdout_mean": 0.3, "checkerboard_ratio": 1.0, "blockiness_ratio": 1.0,
           "edge_distance": 0.3, "share_yellow": 0.2, "share_purple": 0.1, "share_white": 0.2,
           "real_share_yellow": 0.3, "real_share_purple": 0.1, "real_share_white": 0.2}
A1, A2 = "f17-color-arch1", "f17-color-arch2"
NOMINAL = ("arch1-labels-0.9-0.1", "arch1-labels-0.8-0.2", "arch1-mbd-doubled", "arch1-mbd-off", "arch1-rmsprop",
           "arch1-sgd", "arch1-uniform-noise")

# claim → (overrides that support it, overrides that refute it); an override is (run, metric) → mean.
CASES = {
    "collapse": ({(A2, "share_yellow"): 0.5, (A2, "share_purple"): 0.3}, {(A2, "share_yellow"): 0.2}),
    "batch-size": ({("arch2-batch8", "fd_flowers"): 40.0, ("arch2-batch32", "fd_flowers"): 38.0},
                   {("arch2-batch8", "fd_flowers"): 20.0, ("arch2-batch32", "fd_flowers"): 38.0}),
    "mixing": ({}, {(A1, "near_copy_share_pixels"): 0.5}),
    "arch1-diversity": ({(A1, "recall"): 0.5, (A1, "share_white"): 0.2},
                        {(A1, "recall"): 0.5, (A1, "share_white"): 0.02}),
    "smoothness": ({(A2, "checkerboard_ratio"): 3.0, (A2, "blockiness_ratio"): 2.0},
                   {(A1, "checkerboard_ratio"): 3.0, (A2, "blockiness_ratio"): 2.0}),
    "dropout": ({("arch1-dropout", "fd_flowers"): 45.0}, {("arch1-dropout", "fd_flowers"): 20.0}),
    "nominal": ({}, {("arch1-sgd", "fd_flowers"): 60.0}),
    "iterations": ({}, {(A1 + "@snapshot", "fd_flowers"): 45.0}),
    "d-scores": ({(A2, "d_real_train_mean"): 0.97}, {(A2, "d_real_train_mean"): 0.6}),
    "sharpening": ({("arch1-no-sharpening", "edge_distance"): 0.5}, {(A1, "edge_distance"): 0.5}),
    "flowers102": ({("f102-color-arch2", "fd_flowers"): 20.0, (A2, "fd_flowers"): 40.0},
                   {("f102-color-arch2", "fd_flowers"): 40.0, (A2, "fd_flowers"): 40.0}),
    "black-and-white": ({}, {("f17-gray-arch2", "recall"): 0.02}),
    "black-and-white-102": ({}, {("f102-gray-arch1", "recall"): 0.02}),
}


def world(overrides: dict, seeds: int = 3) -> dict:
    """Metrics of every planned run and seed (and arch1's snapshot): neutral values, overrides, ±1% per seed."""
    rng = np.random.default_rng(0)
    labels = [run.label for run in FULL if run.seed < seeds] + [f"{A1}@snapshot", f"{A1}+s1@snapshot",
                                                                  f"{A1}+s2@snapshot"][:seeds]
    metrics = {}
    for label in labels:
        base = base_label(label)
        metrics[label] = {k: overrides.get((base, k), v) * (1 + 0.01 * rng.standard_normal()) if v else
                          overrides.get((base, k), v) for k, v in NEUTRAL.items()}
    return metrics


@pytest.mark.parametrize("claim", sorted(CASES))
def test_each_rule_can_pass_and_can_fail(claim):
    supporting, refuting = CASES[claim]
    assert judge(STUDY, world(supporting), "full")[claim].status == "supported"
    assert judge(STUDY, world(refuting), "full")[claim].status == "not supported"
    with_one_seed = judge(STUDY, world(supporting, seeds=1), "full")[claim]
    assert with_one_seed.status in ("inconclusive", "not measured"), with_one_seed


def test_every_claim_has_known_answers():
    assert set(CASES) == {claim.id for claim in STUDY.claims}


def test_a_claim_on_a_dataset_the_profile_does_not_train_is_not_measured_whatever_its_numbers():
    verdicts = judge(STUDY, world(CASES["flowers102"][0]), "quick")  # quick trains Flowers-17 only
    assert verdicts["flowers102"].status == verdicts["black-and-white-102"].status == "not measured"
    assert verdicts["flowers102"].evidence == "the quick profile does not train on flowers102"
    assert verdicts["black-and-white"].status == "supported"


def test_the_tests_decide_only_beyond_the_spread():
    a, b = np.array([10.0, 10.2, 9.9]), np.array([12.0, 12.1, 11.8])
    assert lower(a, b).outcome == "yes" and higher(a, b).outcome == "no"
    assert lower(np.array([10.0, 14.0, 6.0]), np.array([11.0, 15.0, 7.0])).outcome == "inside the spread"
    assert lower(np.array([10.0]), np.array([20.0])).outcome == "inside the spread"  # one seed: no spread
    assert equivalent(np.array([30.0, 30.5, 29.8]), np.array([30.2, 29.9, 30.1]), 0.25).outcome == "yes"
    assert equivalent(np.array([60.0, 60.5, 59.8]), np.array([30.2, 29.9, 30.1]), 0.25).outcome == "no"
    evidence = Evidence({"run": {"x": 1.0}, "run+s1": {"x": 2.0}, "run+s2": {"x": 3.0}})
    assert evidence.values("run", "x").tolist() == [1.0, 2.0, 3.0]


BEYOND = load_study("beyond")
# The beyond study's neutral world: the source's settings memorize (gap 0.5); the remedies change nothing.
BEYOND_NEUTRAL = {"d_real_gap": 0.5, "fd_effnet": 100.0, "duplicate_ratio": 1.5}
BEYOND_CASES = {
    "diffaug-memorization": ({("arch1-diffaug", "d_real_gap"): 0.1}, {("arch1-diffaug", "d_real_gap"): 0.3}),
    "diffaug-ema-quality": ({("arch1-diffaug-ema", "fd_effnet"): 50.0}, {("arch1-diffaug-ema", "fd_effnet"): 95.0}),
    "no-repeated-mode": ({}, {("arch1-diffaug-ema", "duplicate_ratio"): 6.0}),
    "lecam-adds": ({("arch1-diffaug-ema-lecam", "fd_effnet"): 80.0},
                   {("arch1-diffaug-ema-lecam", "fd_effnet"): 120.0}),
    # Supported by one of the three (here the mode); refuted only when all three are.
    "arch2-too": ({("arch2-diffaug-ema", "fd_effnet"): 120.0},
                  {("arch2-diffaug-ema", "fd_effnet"): 120.0, ("arch2-diffaug-ema", "duplicate_ratio"): 6.0}),
}


def beyond_world(overrides: dict, seeds: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {run.label: {k: overrides.get((run.base, k), v) * (1 + 0.01 * rng.standard_normal())
                        for k, v in BEYOND_NEUTRAL.items()} for run in BEYOND.plan("full") if run.seed < seeds}


@pytest.mark.parametrize("claim", sorted(BEYOND_CASES))
def test_each_beyond_rule_can_pass_and_can_fail(claim):
    supporting, refuting = BEYOND_CASES[claim]
    assert set(BEYOND_CASES) == {c.id for c in BEYOND.claims}
    assert judge(BEYOND, beyond_world(supporting), "full")[claim].status == "supported"
    assert judge(BEYOND, beyond_world(refuting), "full")[claim].status == "not supported"
    assert judge(BEYOND, beyond_world(supporting, seeds=1), "full")[claim].status in ("inconclusive", "not measured")


def test_a_verdict_near_its_threshold_is_fragile_and_one_far_from_it_is_not():
    base = np.array([10.0, 10.5, 9.5])
    far, near = lower(base, np.array([20.0, 20.5, 19.5])), lower(base, np.array([11.4, 12.2, 10.9]))
    assert far.outcome == "yes" and not far.fragile
    assert 0.01 < float(near.margin.split("p=")[1].split()[0]) < 0.1 and near.fragile, near
    assert decide([far], "x").fragile is False and decide([far, near], "x").fragile is True  # plain bools: JSON
    assert "against 0.05" in decide([far, near], "x").deciding  # the weakest yes decides a support
    edge = below(np.array([0.100, 0.104, 0.102]), 0.11)  # the interval ends within 10% of the limit
    assert edge.outcome == "yes" and edge.fragile is True and "limit 0.11" in edge.margin
    assert not below(np.array([0.01, 0.012, 0.011]), 0.11).fragile


def test_a_share_interval_stays_inside_0_and_1():
    shares = np.array([0.01, 0.08, 0.002])  # a t-interval of these runs below 0
    assert interval(shares)[0] < 0 <= interval(shares, share=True)[0] < interval(shares, share=True)[1] < 1
    assert above(np.array([0.6, 0.7, 0.65]), 0.5, share=True).outcome == "yes"


def test_a_verdict_keeps_each_seeds_values_it_read():
    verdict = judge(STUDY, world(CASES["dropout"][0]), "full")["dropout"]
    assert set(verdict.seeds) == {f"{A1}: fd_flowers", "arch1-dropout: fd_flowers"}
    assert all(len(values) == 3 for values in verdict.seeds.values())


def test_a_claim_decided_in_fd_flowers_says_whether_fd_effnet_agrees():
    metrics = world(CASES["dropout"][0])  # dropout worse in fd_flowers
    for index, (label, seeds) in enumerate(metrics.items()):
        seeds["fd_effnet"] = (60.0 if label.startswith("arch1-dropout") else 40.0) + index % 3  # worse too
    verdict = judge(STUDY, metrics, "full")["dropout"]
    assert verdict.status == "supported" and verdict.spaces == "fd_effnet agrees", verdict
    for index, (label, seeds) in enumerate(metrics.items()):  # the standard space sees the opposite
        seeds["fd_effnet"] = (20.0 if label.startswith("arch1-dropout") else 40.0) + index % 3
    verdict = judge(STUDY, metrics, "full")["dropout"]
    assert verdict.status == "supported" and "in fd_effnet it is not supported" in verdict.evidence, verdict
    assert judge(STUDY, world(CASES["dropout"][0]), "full")["dropout"].spaces == "fd_effnet not measured"
    assert judge(STUDY, world({}), "full")["mixing"].spaces == ""  # reads no Fréchet distance: nothing to say
