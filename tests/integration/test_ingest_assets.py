"""The ingest jobs, run through Dagster against real files and a real HTTP server."""

import hashlib

import dagster as dg
import numpy as np
from conftest import flowers_like, jpeg, make_tgz, prepare
from scipy.io import savemat

from flower_pipeline.tensor_cache import TensorCache


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _materialized(instance, asset: str, partition: str) -> bool:
    return partition in instance.get_materialized_partitions(dg.AssetKey(asset))


def _failure(result) -> str:
    return result.get_step_failure_events()[0].step_failure_data.user_failure_data.description


def test_synthetic_variant_materializes_with_checks_and_preview(tmp_path):
    with dg.instance_for_test() as instance:
        result = prepare(instance, tmp_path / "data", "synthetic-color-32")
        assert result.success
        assert _checks(result) == dict.fromkeys(["image_count", "tensor_format", "no_duplicates", "class_balance"],
                                                True)
        ref = result.output_for_node("tensor_cache")
        metadata = result.asset_materializations_for_node("tensor_cache")[0].metadata
        assert metadata["images"].value == 320 and metadata["synthetic"].value is True
        assert "data:image/png;base64," in metadata["preview"].value
        assert metadata["content_hash"].value == ref.content_hash and len(ref.content_hash) == 64
        cache = TensorCache.load(ref.path)
        assert cache.images.shape == (320, 3, 32, 32) and isinstance(cache.images, np.memmap)
        assert np.bincount(cache.labels).tolist() == [40] * 8 and cache.variant == "synthetic-color-32"
        assert cache.holdout.sum() == 32 and np.bincount(cache.labels[cache.holdout]).tolist() == [4] * 8
        # Same inputs and parameters: the same content-keyed cache, reused.
        again = prepare(instance, tmp_path / "data", "synthetic-color-32").output_for_node("tensor_cache")
        assert again.path == ref.path and again.reused


def test_colour_and_gray_variants_of_one_dataset_coexist_and_share_its_download(tmp_path):
    with dg.instance_for_test() as instance:
        color = prepare(instance, tmp_path / "data", "synthetic-color-32").output_for_node("tensor_cache")
        gray = prepare(instance, tmp_path / "data", "synthetic-gray-32").output_for_node("tensor_cache")
        assert TensorCache.load(color.path).images.shape[1] == 3 and TensorCache.load(gray.path).images.shape[1] == 1
        assert color.path != gray.path and TensorCache.load(color.path).images.shape[0] == 320
        assert instance.get_dynamic_partitions("variants") == ["synthetic-color-32", "synthetic-gray-32"]
        assert instance.get_dynamic_partitions("datasets") == ["synthetic"]
        assert {_materialized(instance, "tensor_cache", v) for v in ("synthetic-color-32", "synthetic-gray-32")} == {
            True}


def test_two_custom_collections_under_different_names_coexist(tmp_path):
    for name, count in (("roses", 3), ("tulips", 5)):
        folder = tmp_path / name / "all"
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"{i}.jpg").write_bytes(jpeg(seed=i + 10 * count))
    with dg.instance_for_test() as instance:
        roses = prepare(instance, tmp_path / "data", "roses-color-32", {"source": str(tmp_path / "roses")})
        tulips = prepare(instance, tmp_path / "data", "tulips-color-32", {"source": str(tmp_path / "tulips")})
        assert roses.success and tulips.success
        assert TensorCache.load(roses.output_for_node("tensor_cache").path).images.shape[0] == 3
        assert TensorCache.load(tulips.output_for_node("tensor_cache").path).images.shape[0] == 5


def test_a_failed_run_marks_nothing_and_a_good_rerun_succeeds(tmp_path):
    page = tmp_path / "17flowers.tgz"
    page.write_bytes(b"<!DOCTYPE html><html>Service unavailable</html>")
    sha = hashlib.sha256(page.read_bytes()).hexdigest()
    with dg.instance_for_test() as instance:
        bad = prepare(instance, tmp_path / "data", "flowers17-color-64", {"source": str(page), "sha256": sha})
        assert not bad.success
        assert "HTML" in _failure(bad) and "\n" not in _failure(bad)
        assert not _materialized(instance, "extracted_images", "flowers17")
        assert not list((tmp_path / "data").rglob("stage_outputs/extracted_images/*.json"))
        assert not _materialized(instance, "tensor_cache", "flowers17-color-64")

        good = tmp_path / "good.tgz"
        good.write_bytes(make_tgz(flowers_like(34)))  # two of 17 classes
        sha = hashlib.sha256(good.read_bytes()).hexdigest()
        ok = prepare(instance, tmp_path / "data", "flowers17-color-64", {"source": str(good), "sha256": sha})
        assert ok.success and _materialized(instance, "tensor_cache", "flowers17-color-64")
        assert _checks(ok)["image_count"] is False  # 34 of the catalogued 1,360: reported, not hidden


def test_a_mirror_without_a_checksum_is_refused(tmp_path):
    with dg.instance_for_test() as instance:
        result = prepare(instance, tmp_path / "data", "flowers17-color-64", {"source": "http://127.0.0.1:9/x.tgz"})
        assert "needs --sha256 or --md5" in _failure(result)


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
        result = prepare(instance, tmp_path / "data", "flowers102-color-32", config)
        assert result.success
        cache = TensorCache.load(result.output_for_node("tensor_cache").path)
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
        result = prepare(instance, tmp_path / "data", "garden-color-32", {"source": str(photos)})
        assert result.success and all(_checks(result).values())
        cache = TensorCache.load(result.output_for_node("tensor_cache").path)
        assert cache.meta["class_names"] == ["roses", "tulips"] and cache.labels.tolist() == [0, 0, 0, 1, 1]
    assert {p: p.stat().st_mtime_ns for p in photos.rglob("*")} == before  # the user's folder is only read
