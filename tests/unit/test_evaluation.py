"""Evaluation metrics on images built to have known answers."""

import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from flower_pipeline.effnet import Effnet
from flower_pipeline.evaluation import (
    INCEPTION_FILE,
    EvalSettings,
    colour_report,
    discriminator_scores,
    evaluate,
    fid_kid,
    memorization_report,
    quality_gate,
    resolve_inception_weights,
    scores_in_range,
    timeline_png,
)
from flower_pipeline.metrics import EFFNET_MEASURES, known
from flower_pipeline.registry import promotion_decision, ranking_metric
from flower_pipeline.storage import png_bytes
from flower_pipeline.tensor_cache import write_cache
from flower_pipeline.training import TrainConfig, train

SETTINGS = EvalSettings(kid_subsets=20)
HUES = [(230, 40, 40), (240, 200, 30), (140, 40, 200), (250, 250, 250), (240, 120, 180), (40, 90, 220),
        (250, 140, 20), (120, 30, 60)]


def flowers(colours: list[tuple[int, int, int]], n: int, seed: int, size: int = 32) -> np.ndarray:
    """n images: a green background with a disc of one of `colours` in the middle, slightly varied."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        image = np.empty((size, size, 3), np.float64)
        image[:] = np.array([40, 110, 50]) + rng.normal(0, 8, 3)
        radius = size * rng.uniform(0.25, 0.4)
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2
        image[disc] = np.array(colours[i % len(colours)]) + rng.normal(0, 10, 3)
        image += rng.normal(0, 6, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return images


class StandIn(nn.Module):
    """A small fixed random network standing in for Inception: images → 16 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 5, 2), nn.ReLU(), nn.Conv2d(16, 16, 3, 2), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.net(torch.from_numpy(images).float() / 255).double().numpy()


def test_fid_and_kid_are_near_zero_for_identical_sets_and_grow_with_a_shift():
    features = StandIn()
    real = features(flowers(HUES, 200, seed=1))
    same = fid_kid(real, real.copy(), SETTINGS)
    shifted = fid_kid(real, features(np.clip(flowers(HUES, 200, seed=2).astype(int) + 60, 0, 255).astype(np.uint8)),
                      SETTINGS)
    resampled = fid_kid(real, features(flowers(HUES, 200, seed=3)), SETTINGS)
    assert abs(same["fid"]) < 1e-6 * shifted["fid"]
    # KID's unbiased estimate is noise around 0 for sets from one distribution, identical ones included.
    assert abs(same["kid_mean"]) < 0.1 * shifted["kid_mean"]
    assert shifted["fid"] > 10 * resampled["fid"] > 0 and shifted["kid_mean"] > 10 * abs(resampled["kid_mean"])


def test_kid_subset_size_fits_a_small_held_out_set():
    features = StandIn()
    result = fid_kid(features(flowers(HUES, 24, seed=1)), features(flowers(HUES, 300, seed=2)),
                     replace(SETTINGS, kid_subset_size=1000))
    assert result["kid_subset_size"] == 24 and np.isfinite(result["kid_mean"])


def test_colour_coverage_shows_a_collapse_to_yellow_and_purple():
    real = flowers(HUES, 400, seed=1)
    varied, _ = colour_report(real, flowers(HUES, 256, seed=2), SETTINGS)
    collapsed, _ = colour_report(real, flowers([HUES[1], HUES[2]], 256, seed=3), SETTINGS)
    assert varied["colour_clusters"] == 8
    assert varied["colour_coverage"] == 1.0 and collapsed["colour_coverage"] <= 0.25
    assert collapsed["generated_colour_clusters"] == 2
    assert collapsed["colour_distance"] > 5 * varied["colour_distance"]


def test_memorization_flags_near_copies_of_training_images():
    train_images = flowers(HUES, 200, seed=1) / 255.0
    holdout = flowers(HUES, 40, seed=2) / 255.0
    rng = np.random.default_rng(0)
    copies = np.clip(train_images[:100] + rng.normal(0, 0.005, train_images[:100].shape), 0, 1)
    copied, nearest_index, _ = memorization_report(train_images, holdout, copies, SETTINGS, "pixels")
    fresh = memorization_report(train_images, holdout, flowers(HUES, 100, seed=3) / 255.0, SETTINGS, "pixels")[0]
    assert copied["near_copy_share_pixels"] == 1.0 and copied["memorization_ratio_pixels"] < 0.3
    np.testing.assert_array_equal(nearest_index, np.arange(100))
    assert fresh["near_copy_share_pixels"] < 0.1 and 0.7 < fresh["memorization_ratio_pixels"] < 1.5


def test_scores_gate_and_promotion_rules():
    good = {"d_real_holdout_mean": 0.6, "d_real_train_mean": 0.62, "d_fake_mean": 0.4, "colour_coverage": 0.9,
            "near_copy_share_pixels": 0.0, "colour_distance": 0.05}
    assert scores_in_range(good)[0]
    assert not scores_in_range({**good, "d_fake_mean": float("nan")})[0]
    assert not scores_in_range({**good, "d_real_holdout_mean": 1.0})[0]

    gate = EvalSettings(max_fid=100, min_colour_coverage=0.5, max_near_copy_share=0.2, max_fd_flowers=20,
                        min_recall=0.3)
    assert quality_gate(good, gate)[0]  # FID and the flowers measures not measured: judged on the rest
    assert not quality_gate({**good, "fd_flowers": 25.0, "recall": 0.5}, gate)[0]
    passed, why = quality_gate({**good, "fd_flowers": 5.0, "recall": 0.2}, gate)
    assert not passed and "recall 0.2 < 0.3" in why
    passed, why = quality_gate({**good, "fid": 140.0}, gate)
    assert not passed and "fid 140 > 100" in why
    assert not quality_gate({**good, "colour_coverage": 0.25}, gate)[0]
    assert quality_gate({**good, "mode_share_ratio": 4.0}, gate)[0]  # the mode gate is off by default
    passed, why = quality_gate({**good, "mode_share_ratio": 4.0}, replace(gate, max_mode_share_ratio=2))
    assert not passed and "mode_share_ratio 4 > 2" in why

    assert promotion_decision(False, "failed: x", good, None) == (False, "quality gate failed: x")
    assert promotion_decision(True, "passed", good, None)[0]
    promote, why = promotion_decision(True, "passed", {**good, "fid": 40.0}, {**good, "fid": 50.0})
    assert promote and why.startswith("fid 40 beats")
    promote, why = promotion_decision(True, "passed", {**good, "fid": 60.0}, {**good, "fid": 50.0})
    assert not promote and "does not beat" in why
    # Without FID on both sides, the colour distance decides.
    promote, why = promotion_decision(True, "passed", {**good, "colour_distance": 0.04}, {**good, "fid": 50.0})
    assert promote and why.startswith("colour_distance")


def test_ranking_uses_fid_then_fd_effnet_then_fd_flowers_of_the_same_space_then_colour_distance():
    net_a, net_b = {"feature_network": "a"}, {"feature_network": "b"}
    both = {"fid": 40.0, "fd_flowers": 3.0, "colour_distance": 0.1}
    assert ranking_metric({**both, **net_a}, {**both, **net_b}) == "fid"
    no_fid = {"fd_flowers": 3.0, "colour_distance": 0.1}
    assert ranking_metric({**no_fid, **net_a}, {**no_fid, **net_a}) == "fd_flowers"
    assert ranking_metric({**no_fid, **net_a}, {**no_fid, **net_b}) == "colour_distance"  # other network's scale
    assert ranking_metric({"colour_distance": 0.1, **net_a}, {**no_fid, **net_a}) == "colour_distance"
    promote, why = promotion_decision(True, "passed", {**no_fid, "fd_flowers": 2.0, **net_a}, {**no_fid, **net_a})
    assert promote and why.startswith("fd_flowers 2 beats the champion's 3")
    effnet = {"fd_effnet": 90.0, "effnet_space": "lite0-64px"}
    assert ranking_metric({**no_fid, **net_a, **effnet}, {**no_fid, **net_b, **effnet}) == "fd_effnet"
    assert ranking_metric({**both, **effnet}, {**both, **effnet}) == "fid"
    other_space = {**effnet, "effnet_space": "lite0-128px"}
    assert ranking_metric({**no_fid, **net_a, **effnet}, {**no_fid, **net_a, **other_space}) == "fd_flowers"


def test_inception_weights_off_missing_or_unreachable_are_reported_with_the_reason(tmp_path):
    assert resolve_inception_weights("off", tmp_path) == (None, "turned off (inception_weights: off)")
    weights, why = resolve_inception_weights(str(tmp_path / "nope.pth"), tmp_path)
    assert weights is None and "does not exist" in why
    with socket.socket() as closed:  # a port nobody listens on: the download fails at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    weights, why = resolve_inception_weights("auto", tmp_path, url=f"http://127.0.0.1:{port}/{INCEPTION_FILE}")
    assert weights is None and "could not download" in why and "inception_weights" in why
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
    (tmp_path / INCEPTION_FILE).write_bytes(b"cached, but not the file")  # checked before use, like a given path
    weights, why = resolve_inception_weights("auto", tmp_path)
    assert weights is None and "its sha256 does not start with 6726825d" in why and "delete it" in why


def test_timeline_stacks_the_fixed_noise_grids_oldest_first(tmp_path):
    from flower_pipeline.plots import grid_png

    for iteration, shade in ((0, 0), (50, 120), (100, 250)):
        (tmp_path / f"iter_{iteration:06d}.png").write_bytes(grid_png(np.full((16, 3, 8, 8), shade, np.uint8), 8))
    (tmp_path / "unrelated.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    import cv2

    timeline = cv2.imdecode(np.frombuffer(timeline_png(tmp_path), np.uint8), cv2.IMREAD_COLOR_RGB)
    assert timeline.shape == (3 * 12, 90 + 8 * 10 + 2, 3)  # three strips of one row of eight 8-pixel samples
    assert timeline[4, 95, 0] == 0 and timeline[16, 95, 0] == 120 and timeline[28, 95, 0] == 250


def test_evaluate_a_finished_training(tmp_path):
    images = flowers(HUES, 160, seed=1).transpose(0, 2, 3, 1)  # more than fd_effnet's 112 dimensions
    path, *_ = write_cache(tmp_path / "cache", images, np.arange(160) % 8, [f"{i}.jpg" for i in range(160)],
                          class_names=[str(i) for i in range(8)], params={"dataset": "test"}, holdout_fraction=0.25)
    from flower_pipeline.tensor_cache import TensorCache

    cache = TensorCache.load(path)
    config = TrainConfig(iterations=8, batch_size=8, features=8, minibatch_kernels=8, log_every=4, sample_every=4,
                         checkpoint_seconds=0)
    train(config, cache, tmp_path / "run", device="cpu")
    result = evaluate(tmp_path / "run", cache, replace(SETTINGS, samples=120), inception=StandIn(),
                      no_inception_reason="unused", flowers=StandIn(), effnet=Effnet())
    metrics = result.metrics
    assert result.unavailable == {}
    assert [name for name in metrics if not known(name)] == []  # computed but undeclared: it would reach nothing
    for key in ("d_real_holdout_mean", "d_real_train_mean", "d_fake_mean", "d_real_gap", "fid", "kid_mean",
                "colour_distance", "colour_coverage", "near_copy_share_pixels", "near_copy_share_inception",
                "fd_flowers", "kd_flowers", "precision", "recall", *EFFNET_MEASURES):
        assert np.isfinite(metrics[key]), key
    assert 0 < metrics["d_real_holdout_mean"] < 1
    assert metrics["kid_subset_size"] == 120  # all 160 real images vs 120 samples
    assert {"samples", "timeline", "nearest_pairs", "colours", "mode", "metrics"} <= set(result.files)
    assert all(p.parent == tmp_path / "run" / "evaluation" for p in result.files.values())

    offline = evaluate(tmp_path / "run", cache, replace(SETTINGS, samples=120), no_inception_reason="no weights")
    assert "fid" not in offline.metrics and offline.unavailable["fid"] == "no weights"
    assert "fd_flowers" not in offline.metrics and offline.unavailable["recall"] == "no feature network"
    assert offline.unavailable["fd_effnet"] == "no EfficientNet"
    for key in ("d_real_holdout_mean", "d_fake_mean", "colour_coverage", "near_copy_share_pixels"):
        assert offline.metrics[key] == pytest.approx(metrics[key]), key  # same seed, same samples


def test_inception_features_wire_torch_fidelity_for_colour_and_gray(tmp_path, monkeypatch):
    """torch-fidelity's Inception-v3 with stand-in (random) weights: the real weights file is not on this machine."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from flower_pipeline.evaluation import inception_features

    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    weights = tmp_path / INCEPTION_FILE
    torch.save({}, weights)
    features = inception_features(weights, batch_size=4)
    colour = features(flowers(HUES, 5, seed=1))
    gray = features(flowers(HUES, 3, seed=1)[:, :1])  # black-and-white: repeated to three channels
    assert colour.shape == (5, 2048) and gray.shape == (3, 2048) and colour.dtype == np.float64
    assert np.isfinite(colour).all() and np.isfinite(gray).all()


def test_a_corrupt_inception_weights_file_is_one_clear_error(tmp_path):
    from flower_pipeline.errors import PipelineError
    from flower_pipeline.evaluation import inception_features

    weights = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(3)}, weights)
    weights.write_bytes(weights.read_bytes()[:50])  # truncated mid-download
    with pytest.raises(PipelineError, match=r"weights\.pth is not a usable Inception weights file"):
        inception_features(weights)


@pytest.mark.parametrize("arch", ["arch1", "arch2"])
def test_d_scores_on_training_images_agree_with_the_last_training_window(tmp_path, arch):
    """Scored as D was trained (batch statistics, training-size batches), D(x) on the training images matches
    the mean D(x) of the training's final log window; scored in eval mode it need not."""
    images = flowers(HUES, 160, seed=1).transpose(0, 2, 3, 1)
    path, *_ = write_cache(tmp_path / "cache", images, np.arange(160) % 8, [f"{i}.jpg" for i in range(160)],
                           class_names=[str(i) for i in range(8)], params={"dataset": "test"})
    from flower_pipeline.tensor_cache import TensorCache
    from flower_pipeline.training import load_trained

    cache = TensorCache.load(path)
    # A slow lr keeps D nearly still over the final window: at the default lr D swings by up to 0.1 within 8
    # iterations (measured on 4 seeds), which is D moving, not the scoring being wrong.
    config = TrainConfig(arch=arch, iterations=120, batch_size=16, features=8, minibatch_kernels=8, log_every=8,
                         instance_noise=0.0, checkpoint_seconds=0, lr=5e-5)
    result = train(config, cache, tmp_path / "run", device="cpu")
    trained = load_trained(tmp_path / "run")
    scores = discriminator_scores(trained.discriminator, cache.train_images(), config.batch_size)
    # Within 0.06 (the issue asks 0.1; 0.032 at worst over 4 seeds): eval-mode scores miss it by 0.10-0.21.
    assert abs(scores.mean() - result.final["d_real"]) < 0.06, (scores.mean(), result.final["d_real"])
    again = discriminator_scores(trained.discriminator, cache.train_images(), config.batch_size)
    np.testing.assert_array_equal(scores, again)  # same seed, same batches: and D's saved state is untouched
