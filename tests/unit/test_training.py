from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_config

from flower_pipeline.errors import PipelineError
from flower_pipeline.tensor_cache import TensorCache, write_cache
from flower_pipeline.training import TrainConfig, load_trained, train

TINY = tiny_config(iterations=12, batch_size=4, minibatch_kernels=8, log_every=4, sample_every=6)


def test_every_numeric_setting_has_a_range_checked_wherever_it_enters():
    from flower_pipeline.evaluation import EvalSettings

    for bad in ({"iterations": 10**30}, {"features": 0}, {"batch_size": 10**8}, {"lr": -1.0}):
        with pytest.raises(PipelineError, match=f"{next(iter(bad))} must be a number from"):
            TrainConfig(**bad)
    with pytest.raises(PipelineError, match="samples must be a number from 2 to 100000, got -5"):
        EvalSettings(samples=-5)


def test_architecture_defaults_and_overrides():
    arch1, arch2 = TrainConfig(arch="arch1").resolved(), TrainConfig(arch="arch2").resolved()
    assert (arch1.real_label, arch1.fake_label, arch1.minibatch_discrimination, arch1.dropout) == (0.9, 0.0, True, 0.0)
    assert (arch2.real_label, arch2.fake_label, arch2.minibatch_discrimination, arch2.dropout) == (1.0, 0.0, False, 0.3)
    two_sided = TrainConfig(real_label=0.8, fake_label=0.2, minibatch_discrimination=False).resolved()
    assert (two_sided.real_label, two_sided.fake_label, two_sided.minibatch_discrimination) == (0.8, 0.2, False)
    assert (TrainConfig().batch_size, TrainConfig().iterations) == (16, 20_000)
    with pytest.raises(PipelineError):
        TrainConfig(optimizer="lbfgs").resolved()


def test_instance_noise_decays_linearly_to_zero():
    config = TrainConfig(iterations=1000, instance_noise=0.2, instance_noise_decay=0.5)
    assert config.instance_noise_std(0) == pytest.approx(0.2)
    assert config.instance_noise_std(250) == pytest.approx(0.1)
    assert config.instance_noise_std(500) == 0.0 and config.instance_noise_std(900) == 0.0


@pytest.mark.parametrize("overrides", [{"arch": "arch2"}, {"optimizer": "rmsprop", "latent_noise": "uniform"},
                                       {"optimizer": "sgd", "minibatch_weight": 2.0}])
def test_training_writes_all_outputs(small_cache, tmp_path, overrides):
    logs, samples = [], []
    result = train(replace(TINY, **overrides), small_cache, tmp_path, device="cpu", on_log=logs.append,
                   on_sample=lambda it, path: samples.append(it))
    assert [r["iteration"] for r in logs] == [4, 8, 12] and samples == [0, 6, 12]
    assert {"generator", "final_grid", "history", "curves"} <= set(result.files)
    assert not (tmp_path / "checkpoint.pt").exists()
    trained = load_trained(tmp_path)
    assert trained.generator(torch.randn(2, trained.config.latent_dim)).shape == (2, 3, 32, 32)
    assert trained.discriminator(torch.zeros(4, 3, 32, 32)).shape == (4,)
    images = trained.generator.generate(5, seed=3)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, trained.generator.generate(5, seed=3))


@pytest.mark.parametrize("config", [TINY, replace(TINY, augment="color,translation,cutout", g_ema=0.9, lecam=0.1)],
                         ids=["source", "augment-ema-lecam"])
def test_same_seed_same_result_and_resume_after_kill_matches(small_cache, tmp_path, config):
    full = train(config, small_cache, tmp_path / "full", device="cpu")
    again = train(config, small_cache, tmp_path / "again", device="cpu")
    killed_dir = tmp_path / "killed"

    def kill_after_checkpoint(record):
        if record["iteration"] == 8:
            raise KeyboardInterrupt  # after the checkpoint at 8: as if the process died

    with pytest.raises(KeyboardInterrupt):
        train(config, small_cache, killed_dir, device="cpu", on_log=kill_after_checkpoint)
    assert (killed_dir / "checkpoint.pt").exists()
    resumed = train(config, small_cache, killed_dir, device="cpu")

    def weights(result):
        return torch.load(result.files["generator"], weights_only=True)["state_dict"]

    for other in (again, resumed):
        assert all(torch.equal(weights(full)[k], weights(other)[k]) for k in weights(full))
        assert other.history == [{**h, "it_per_s": o["it_per_s"], "eta_s": o["eta_s"]}
                                 for h, o in zip(full.history, other.history, strict=True)]


def test_a_stopped_training_ends_before_its_next_step_and_keeps_its_checkpoint(small_cache, tmp_path):
    import threading

    run_ended = threading.Event()  # set by the step's watch when its run fails elsewhere

    def end_run_after_checkpoint(record):
        if record["iteration"] == 8:
            run_ended.set()

    with pytest.raises(PipelineError, match="training stopped at iteration 8: its run has ended"):
        train(TINY, small_cache, tmp_path, device="cpu", on_log=end_run_after_checkpoint, stop=run_ended)
    assert (tmp_path / "checkpoint.pt").exists()  # a retry resumes from it


def test_nan_stops_training_naming_the_iteration(small_cache, tmp_path, monkeypatch):
    from flower_pipeline import training

    bce = training.F.binary_cross_entropy_with_logits
    calls = {"n": 0}

    def diverging(*args, **kwargs):  # the losses blow up from the 9th call (iteration 4 or 5) on, as lr 1e30 did
        calls["n"] += 1
        return bce(*args, **kwargs) * (float("nan") if calls["n"] > 8 else 1.0)

    monkeypatch.setattr(training.F, "binary_cross_entropy_with_logits", diverging)
    with pytest.raises(PipelineError, match=r"NaN or inf at iteration [345]$"):
        train(TINY, small_cache, tmp_path, device="cpu")


def test_untrainable_or_broken_caches_are_refused_in_one_line(tmp_path):
    images = np.zeros((8, 48, 48, 3), np.uint8)
    images[:, :, :24] = 255
    path, *_ = write_cache(tmp_path / "c48", images, np.zeros(8), [f"{i}.jpg" for i in range(8)], class_names=["a"],
                          params={"dataset": "test", "size": 48})
    with pytest.raises(PipelineError, match="power of two"):
        train(TINY, TensorCache.load(path), tmp_path / "run", device="cpu")
    (path / "images.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(PipelineError, match="not a complete tensor cache"):
        TensorCache.load(path)
    with pytest.raises(PipelineError, match="not a complete tensor cache"):
        TensorCache.load(tmp_path / "nowhere")


def test_deterministic_training_gives_the_same_generator_whatever_the_thread_count(small_cache, tmp_path):
    config = replace(TINY, iterations=6, batch_size=16, features=32, minibatch_kernels=16, deterministic=True)
    threads, weights = torch.get_num_threads(), []
    try:
        for count in (2, 1):  # another machine's thread count
            torch.set_num_threads(count)
            train(config, small_cache, tmp_path / f"t{count}", device="cpu")
            weights.append(load_trained(tmp_path / f"t{count}").generator.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # left as it was
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_a_training_folder_has_one_trainer_at_a_time(small_cache, tmp_path):
    import fcntl

    from flower_pipeline.training import training_lock

    # An orphan of a failed run, still training, holds the folder.
    with training_lock(tmp_path / "run"), pytest.raises(PipelineError, match=r"is being trained by pid \d+ on "):
        train(TINY, small_cache, tmp_path / "run", device="cpu")
    with open(tmp_path / "run" / ".training.lock") as lock:  # released when its holder ends
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_scored_snapshots_are_kept_bounded_and_leave_earlier_runs_their_keys(small_cache, tmp_path):
    from flower_pipeline.runs import training_fingerprint
    from flower_pipeline.training import fusion_bucket

    # A run made before eval_every existed keeps its folder (these are the keys an earlier version computed).
    assert training_fingerprint("0" * 64, TrainConfig(arch="arch2", precision="fp32").resolved()) == "1f50e6998157"
    scored = TrainConfig(iterations=3000, eval_every=300)
    assert scored.scored_snapshots() == tuple(range(300, 3000, 300)) and scored.identity()["eval_every"] == 300
    assert "eval_every" not in replace(scored, eval_every=0).identity()
    assert fusion_bucket(scored) == fusion_bucket(replace(scored, eval_every=0))  # only files differ: fusable
    with pytest.raises(PipelineError, match=r"^eval_every 10 scores 299 snapshots of 3000 iterations; at most 200"):
        replace(scored, eval_every=10).resolved()
    run = train(tiny_config(eval_every=2, precision="fp32"), small_cache, tmp_path, device="cpu")
    assert sorted(p.name for p in run.out_dir.glob("generator*.pt")) == [
        "generator.pt", "generator_000002.pt", "generator_000004.pt"]
