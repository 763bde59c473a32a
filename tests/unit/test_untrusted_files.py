"""Every file the pipeline loads is untrusted: each torch file on a load path, replaced by a pickle whose loading
would write a marker file, is refused in one line, and the marker never appears."""

import re
from pathlib import Path

import pytest
import torch
from conftest import PROJECT, plant, tiny_config

from flower_pipeline.errors import PipelineError
from flower_pipeline.training import load_trained, train

TINY = tiny_config(iterations=8, batch_size=4, minibatch_kernels=8, log_every=4, sample_every=8)


def test_a_planted_checkpoint_generator_or_discriminator_file_is_refused_unrun(small_cache, trained, tmp_path):
    marker = tmp_path / "marker"
    for name in ("generator.pt", "final_state.pt"):
        saved = (trained / name).read_bytes()
        plant(trained / name, marker)
        with pytest.raises(PipelineError, match=f"{re.escape(name)} is not a tensors-only file") as refused:
            load_trained(trained)
        assert "\n" not in str(refused.value)
        (trained / name).write_bytes(saved)
    assert load_trained(trained).generator.generate(2).shape == (2, 3, 32, 32)  # the real files still load

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(TINY, small_cache, killed, device="cpu", on_log=lambda r: (_ for _ in ()).throw(KeyboardInterrupt))
    plant(killed / "checkpoint.pt", marker)  # a retry resumes from the checkpoint
    with pytest.raises(PipelineError, match=r"checkpoint\.pt is not a tensors-only file"):
        train(TINY, small_cache, killed, device="cpu")
    assert not marker.exists()


def test_a_planted_feature_network_is_refused_unrun(tmp_path):
    from flower_pipeline.feature_network import load_feature_network

    marker = tmp_path / "marker"
    plant(tmp_path / "model.pt", marker)
    with pytest.raises(PipelineError, match=r"model\.pt is not a tensors-only file"):
        load_feature_network(tmp_path / "model.pt")
    assert not marker.exists()


def test_planted_inception_weights_are_refused_by_checksum_and_read_tensors_only(tmp_path):
    from flower_pipeline.evaluation import inception_features, resolve_inception_weights

    marker, weights = tmp_path / "marker", tmp_path / "weights.pth"
    plant(weights, marker)
    found, why = resolve_inception_weights(str(weights), tmp_path)  # the setting, a study or the profile
    assert found is None and "its sha256 does not start with 6726825d" in why
    with pytest.raises(PipelineError, match="is not a usable Inception weights file"):
        inception_features(weights)  # even past the checksum: torch-fidelity's own load reads tensors only
    assert not marker.exists()



def _rewrite(path: Path, **changes) -> None:
    """The weights file at `path` with some of its plain values or weights replaced, saved as torch saves."""
    saved = torch.load(path, weights_only=True)
    state = changes.pop("state_dict", {})
    saved.update(changes)
    saved["state_dict"] = {**saved["state_dict"], **state}
    torch.save(saved, path)


def test_a_file_that_would_inflate_or_whose_structure_is_huge_is_refused_before_it_is_read(trained, tmp_path):
    """Memory is bounded by what the file holds: a deflated record (torch writes none) and a structure of
    millions of small ints are refused from the zip's own directory, before torch reads a byte of them."""
    import tracemalloc
    import zipfile

    from flower_pipeline.storage import load_tensors

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:  # 200 MB of zeros in a few hundred kB
        archive.writestr("bomb/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("bomb/data/0", b"\0" * (200 << 20))
    assert bomb.stat().st_size < 1 << 20
    ints = tmp_path / "ints.pt"
    torch.save({"state_dict": list(range(4_000_000))}, ints)  # 20 MB of pickled ints: gigabytes as objects
    tracemalloc.start()
    for path, message in ((bomb, "holds a compressed record"), (ints, "its structure is .* MiB, more than")):
        with pytest.raises(PipelineError, match=message):
            load_tensors(path)
    assert tracemalloc.get_traced_memory()[1] < 50 << 20
    tracemalloc.stop()


@pytest.mark.parametrize(("changes", "message"), [
    ({"image_size": 2**20}, r"image_size is 1048576, outside 16-512"),
    ({"channels": 4096}, r"channels is 4096, outside 1-3"),
    ({"image_size": "64"}, r"image_size is 64, outside 16-512"),
    ({"image_size": 48}, r"48 px × 3 channels is no variant's shape"),
])
def test_a_generator_file_stating_an_oversized_network_is_refused_before_one_is_built(trained, changes, message):
    _rewrite(trained / "generator.pt", **changes)
    with pytest.raises(PipelineError, match=message):
        load_trained(trained)


@pytest.mark.parametrize(("weight", "message"), [
    (float("nan"), "holds NaN or infinite weights"), (float("inf"), "holds NaN or infinite weights"),
    ("int", r"is torch.int64 .*, not torch.float32"), ("shape", r"is torch.float32 \(2,\), not torch.float32"),
])
def test_nan_infinite_int_or_reshaped_weights_are_refused(trained, weight, message):
    state = torch.load(trained / "generator.pt", weights_only=True)["state_dict"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    value = {"int": state[name].long(), "shape": torch.zeros(2)}.get(weight)
    _rewrite(trained / "generator.pt", state_dict={name: state[name].fill_(weight) if value is None else value})
    with pytest.raises(PipelineError, match=f"generator.pt .*{message}"):
        load_trained(trained)


def test_prepare_trains_a_damaged_feature_network_again_instead_of_reusing_it(small_cache, tmp_path):
    from flower_pipeline.feature_network import FeatureSettings, train_feature_network

    settings, said = FeatureSettings(epochs=1, width=4, dim=8), []
    first = train_feature_network(small_cache, settings, tmp_path)
    assert train_feature_network(small_cache, settings, tmp_path).reused
    weights = torch.load(first.path, weights_only=True)["state_dict"]["embed.0.weight"]
    for damage in ({"state_dict": {"embed.0.weight": weights.fill_(float("nan"))}}, {"width": 8}):
        _rewrite(first.path, **damage)
        again = train_feature_network(small_cache, settings, tmp_path, log=said.append)
        assert not again.reused and "is not reused" in said[-1] and "training it again" in said[-1]
    assert train_feature_network(small_cache, settings, tmp_path).reused  # the retrained one is whole


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20))


def test_settings_files_are_bounded_regular_files_without_alias_bombs(tmp_path, monkeypatch):
    import os
    import time

    from flower_pipeline.defs.automation import retraining_run_config
    from flower_pipeline.study import load_study

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(PipelineError, match="uses more than 100 YAML aliases; refused"):
        load_study(str(bomb))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(PipelineError, match=r"fifo\.yaml is not a regular file"):
        load_study(str(fifo))  # would block forever waiting for a writer
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    with pytest.raises(PipelineError, match="is larger than 1 MiB"):
        load_study(str(huge))
    for profile in (bomb, fifo, Path("/dev/zero")):
        monkeypatch.setenv("FLOWER_PIPELINE_RETRAINING", str(profile))
        with pytest.raises(PipelineError, match="retraining profile"):
            retraining_run_config()
    assert time.monotonic() - started < 10


def test_unknown_keys_and_out_of_range_values_are_named_at_every_level(tmp_path, monkeypatch):
    from flower_pipeline.defs.automation import retraining_run_config
    from flower_pipeline.study import load_study

    source = (PROJECT / "flower_pipeline" / "studies" / "source.yaml").read_text()
    for old, new, message in (
            ("\nprofiles:", "\nprofile_typo: 1\nprofiles:", "unknown key 'profile_typo'"),
            ("    size: 32", "    size: 32\n    sizes: 64", "profile quick: unknown key 'sizes'"),
            ("  - id: ", "  - idd: x\n    id: ", "unknown key 'idd'"),
            ("{label: f17-color-arch2,", "{labl: x, label: f17-color-arch2,", "unknown key 'labl'"),
            ("    iterations: 400", "    iterations: 1000000000000", "iterations must be a number from 1 to")):
        assert old in source, old
        study = tmp_path / "study.yaml"
        study.write_text(source.replace(old, new, 1))
        with pytest.raises(PipelineError, match=message):
            load_study(str(study))
    profile = tmp_path / "retraining.yaml"
    monkeypatch.setenv("FLOWER_PIPELINE_RETRAINING", str(profile))
    for text, message in (("trainig: {iterations: 5}\n", "unknown section 'trainig'"),
                          ("training: {batch_size: 100000000}\n", "batch_size must be a number from 2 to 4096"),
                          ("evaluation: {samples: -5}\n", "samples must be a number from 2 to 100000, got -5"),
                          ("evaluation: {inception_weights: /etc/passwd}\n", "its sha256 does not start with")):
        profile.write_text(text)
        with pytest.raises(PipelineError, match=message):
            retraining_run_config()


@pytest.mark.parametrize("kind", ["fifo", "zeros", "large", "nul", "latin1", "other owner"])
def test_a_secret_file_is_a_small_text_file_of_the_readers_own_read_without_blocking(tmp_path, monkeypatch, kind):
    import os
    import time

    from flower_pipeline.environment import BROKER_ENV
    from flower_pipeline.scaleout.settings import read_secret_files

    secret = tmp_path / "secret"
    if kind == "fifo":
        os.mkfifo(secret, 0o600)
    elif kind == "zeros":
        secret = Path("/dev/zero")
    else:
        secret.write_bytes({"large": b"x" * 100_000, "nul": b"amqp://a\0b", "latin1": "pässword".encode("latin-1"),
                            "other owner": b"amqp://guest@127.0.0.1//"}[kind])
        secret.chmod(0o600)
        if kind == "other owner":
            os.chown(secret, 65534, 65534)  # nobody's
    message = {"fifo": "is not a regular file", "zeros": "may be read by others|is not a regular file",
               "large": "is larger than 64 KiB", "nul": "holds a NUL byte", "latin1": "is not UTF-8 text",
               "other owner": "belongs to another user"}[kind]
    monkeypatch.delenv(BROKER_ENV, raising=False)
    monkeypatch.setenv(f"{BROKER_ENV}_FILE", str(secret))
    started = time.monotonic()
    with pytest.raises(PipelineError, match=message) as refused:
        read_secret_files()
    assert time.monotonic() - started < 5 and "\n" not in str(refused.value)
    assert BROKER_ENV not in os.environ


def test_a_bare_tensor_as_a_generator_file_is_one_line(trained):
    torch.save(torch.zeros(3), trained / "generator.pt")
    with pytest.raises(PipelineError, match=r"generator\.pt is not a generator file of this pipeline \(no settings"):
        load_trained(trained)
