"""The offline measures prove themselves on sets with known answers: real Flowers-17 and synthetic flowers."""


import numpy as np
import pytest
import torch
from conftest import assert_known_answers, measure_known_answers

from flower_pipeline import effnet as effnet_module
from flower_pipeline.catalog import Variant
from flower_pipeline.effnet import Effnet
from flower_pipeline.errors import PipelineError
from flower_pipeline.feature_network import (
    FeatureSettings,
    feature_network_unavailable,
    flower_features,
    flowers_measures,
    load_feature_network,
    precision_recall,
    train_feature_network,
)
from flower_pipeline.ingest import prepare_variant
from flower_pipeline.tensor_cache import TensorCache, write_cache


def test_known_answers_on_synthetic_flowers(tmp_path):
    ref = prepare_variant(tmp_path, Variant("synthetic", "color", 32), holdout_fraction=0.5)
    table, accuracy = measure_known_answers(TensorCache.load(ref.path), FeatureSettings(dim=32, epochs=12),
                                             tmp_path / "net")
    assert accuracy > 0.4  # 8 classes, chance 0.125
    assert_known_answers(table)



def test_effnet_reads_its_weights_only_after_their_checksum(monkeypatch):
    monkeypatch.setattr(effnet_module, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(PipelineError, match="not the EfficientNet-Lite0 weights expected"):
        Effnet()


def test_effnet_features_are_the_same_whatever_the_thread_count():
    images = np.random.default_rng(0).integers(0, 256, (8, 1, 32, 32), dtype=np.uint8)  # grey: repeated to RGB
    effnet, threads = Effnet(), torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = effnet.features(images)
        torch.set_num_threads(1)
        second = effnet.features(images)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(first.head, second.head)
    assert first.stage5.shape == (8, 112) and first.head.shape == (8, 1280)


def test_same_inputs_and_seed_give_the_same_numbers(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    path, *_ = write_cache(tmp_path / "cache", images, np.arange(60) % 3, [f"{i}.jpg" for i in range(60)],
                           class_names=["a", "b", "c"], params={"dataset": "test"}, holdout_fraction=0.2)
    cache, settings = TensorCache.load(path), FeatureSettings(epochs=2, width=4, dim=8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = train_feature_network(cache, settings, tmp_path / "a")
        torch.set_num_threads(1)  # another machine's thread count: the same network
        second = train_feature_network(cache, settings, tmp_path / "b")
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # left as it was
    assert first.accuracy == second.accuracy and not first.reused
    assert train_feature_network(cache, settings, tmp_path / "a").reused  # cached by its folder
    a, b = (flower_features(load_feature_network(r.path), cache.images) for r in (first, second))
    np.testing.assert_array_equal(a, b)
    assert flowers_measures(a[:30], a[30:]) == flowers_measures(b[:30], b[30:])


def test_too_few_images_or_no_labels_give_one_reason(tmp_path):
    features = np.random.default_rng(0).normal(size=(40, 16))
    with pytest.raises(PipelineError, match="needs more than 16 images on each side"):
        flowers_measures(features[:30], features[30:])
    with pytest.raises(PipelineError, match="more than k=3 images"):
        precision_recall(features[:3], features[3:])
    images = np.zeros((10, 16, 16, 3), np.uint8)
    path, *_ = write_cache(tmp_path / "one", images, np.zeros(10), [f"{i}.jpg" for i in range(10)],
                           class_names=["all"], params={"dataset": "roses"})
    reason = feature_network_unavailable(TensorCache.load(path), FeatureSettings())
    assert reason is not None and "needs labels" in reason and "\n" not in reason


def test_a_truncated_or_foreign_effnet_reference_file_is_computed_again(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    effnet, path = Effnet(), tmp_path / "reference.npz"
    for junk in (b"PK\x03\x04 truncated", b"not an archive at all"):
        path.write_bytes(junk)
        assert effnet.reference(images, path).head.shape == (4, 1280)
        assert effnet.reference(images, path).head.shape == (4, 1280)  # and kept, readable, the next time
