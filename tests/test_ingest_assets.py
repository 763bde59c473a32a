"""The ingest assets, materialized through Dagster against real files and a real HTTP server."""

import hashlib
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from conftest import FLOWERS17_SHA256, FLOWERS17_TGZ, flowers_like, jpeg, make_tgz
from scipy.io import savemat

from flower_pipeline.defs.ingest import extracted_images, raw_archive, resized_images, tensor_cache
from flower_pipeline.defs.resources import FlowerStorage
from flower_pipeline.tensor_cache import TensorCache

ASSETS = [raw_archive, extracted_images, resized_images, tensor_cache]


def _run(instance, data_dir: Path, partition: str, raw_config: dict | None = None, size: int = 64):
    return dg.materialize(
        ASSETS, partition_key=partition, instance=instance, raise_on_error=False,
        resources={"storage": FlowerStorage(data_dir=str(data_dir))},
        run_config={"ops": {"raw_archive": {"config": raw_config or {}},
                            "resized_images": {"config": {"size": size}}}},
    )


def _checks(result) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def _materialized(instance, asset: str, partition: str) -> bool:
    return instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None and \
        partition in instance.get_materialized_partitions(dg.AssetKey(asset))


def test_synthetic_dataset_materializes_with_checks_and_preview(tmp_path):
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path / "data", "synthetic", size=32)
        assert result.success
        assert _checks(result) == dict.fromkeys(
            ["image_count", "tensor_format", "no_duplicates", "class_balance"], True)
        metadata = result.asset_materializations_for_node("tensor_cache")[0].metadata
        assert metadata["images"].value == 320 and metadata["synthetic"].value is True
        assert "data:image/png;base64," in metadata["preview"].value
        cache = TensorCache.load(metadata["path"].value)
        assert cache.images.shape == (320, 3, 32, 32) and isinstance(cache.images, np.memmap)
        assert np.bincount(cache.labels).tolist() == [40] * 8
        assert cache.holdout.sum() == 32 and np.bincount(cache.labels[cache.holdout]).tolist() == [4] * 8
        # Same inputs and parameters: the same content-keyed cache, reused.
        again = _run(instance, tmp_path / "data", "synthetic", size=32)
        meta2 = again.asset_materializations_for_node("tensor_cache")[0].metadata
        assert meta2["path"].value == metadata["path"].value and meta2["reused"].value is True


def test_a_failed_run_marks_nothing_and_a_good_rerun_succeeds(tmp_path):
    page = tmp_path / "17flowers.tgz"
    page.write_bytes(b"<!DOCTYPE html><html>Service unavailable</html>")
    sha = hashlib.sha256(page.read_bytes()).hexdigest()
    with dg.instance_for_test() as instance:
        bad = _run(instance, tmp_path / "data", "flowers17", {"source": str(page), "sha256": sha})
        assert not bad.success
        failure = bad.get_step_failure_events()[0].step_failure_data.user_failure_data.description
        assert "HTML" in failure and "\n" not in failure
        assert not _materialized(instance, "extracted_images", "flowers17")
        assert not _materialized(instance, "tensor_cache", "flowers17")
        assert not (tmp_path / "data" / "flowers17" / "tensor_cache.json").exists()

        good = tmp_path / "good.tgz"
        good.write_bytes(make_tgz(flowers_like(34)))  # two of 17 classes
        sha = hashlib.sha256(good.read_bytes()).hexdigest()
        ok = _run(instance, tmp_path / "data", "flowers17", {"source": str(good), "sha256": sha})
        assert ok.success and _materialized(instance, "tensor_cache", "flowers17")
        assert _checks(ok)["image_count"] is False  # 34 of the catalogued 1,360: reported, not hidden


def test_a_mirror_without_a_checksum_is_refused(tmp_path):
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path / "data", "flowers17", {"source": "http://127.0.0.1:9/x.tgz"})
        message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
        assert "needs --sha256 or --md5" in message


def test_flowers102_from_a_mirror_uses_imagelabels(http_server, tmp_path):
    members = flowers_like(12, digits=5)
    members["jpg/image_00013.jpg"] = b"truncated"
    http_server.files["mirror/102flowers.tgz"] = archive = make_tgz(members)
    labels = np.array([[5, 5, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]])
    for name, table in (("imagelabels.mat", {"labels": labels}),
                        ("setid.mat", {"trnid": [[1]], "valid": [[2]], "tstid": [[3]]})):
        savemat(tmp_path / name, table)
        http_server.files[f"mirror/{name}"] = (tmp_path / name).read_bytes()
    config = {"source": http_server.url("mirror/102flowers.tgz"), "md5": hashlib.md5(archive).hexdigest()}
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path / "data", "flowers102", config, size=32)
        assert result.success
        meta = result.asset_materializations_for_node("tensor_cache")[0].metadata
        cache = TensorCache.load(meta["path"].value)
        assert cache.labels.tolist() == [4, 4, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3]  # 1-based .mat labels
        resize_meta = result.asset_materializations_for_node("resized_images")[0].metadata
        assert resize_meta["skipped"].value == 1 and "jpg/image_00013.jpg" in resize_meta["skipped_images"].value


def test_custom_folder_with_class_subfolders(tmp_path):
    photos = tmp_path / "photos"
    for cls, count in (("roses", 3), ("tulips", 2)):
        (photos / cls).mkdir(parents=True)
        for i in range(count):
            (photos / cls / f"{i}.jpg").write_bytes(jpeg(seed=i + 10 * count))
    before = {p: p.stat().st_mtime_ns for p in photos.rglob("*")}
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path / "data", "custom", {"source": str(photos)}, size=32)
        assert result.success and all(_checks(result).values())
        cache = TensorCache.load(result.asset_materializations_for_node("tensor_cache")[0].metadata["path"].value)
        assert cache.meta["class_names"] == ["roses", "tulips"] and cache.labels.tolist() == [0, 0, 0, 1, 1]
    assert {p: p.stat().st_mtime_ns for p in photos.rglob("*")} == before  # the user's folder is only read


@pytest.mark.real_data
@pytest.mark.skipif(not FLOWERS17_TGZ.is_file(), reason="../shared/datasets/17flowers.tgz is not present")
def test_real_flowers17_prepares_1360_balanced_images(tmp_path):
    with dg.instance_for_test() as instance:
        result = _run(instance, tmp_path / "data", "flowers17",
                      {"source": str(FLOWERS17_TGZ), "sha256": FLOWERS17_SHA256})
        assert result.success
        checks = _checks(result)
        assert checks["image_count"] and checks["tensor_format"] and checks["class_balance"]
        cache = TensorCache.load(result.asset_materializations_for_node("tensor_cache")[0].metadata["path"].value)
        assert cache.images.shape == (1360, 3, 64, 64)
        assert np.bincount(cache.labels).tolist() == [80] * 17
