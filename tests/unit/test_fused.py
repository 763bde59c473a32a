"""The fused trainer: K runs trained as one members-wide model, each member as its solo run."""

from dataclasses import replace

import pytest
import torch

from flower_pipeline.errors import PipelineError
from flower_pipeline.training import (
    TrainConfig,
    Trainer,
    cpu_bf16_units,
    fusion_bucket,
    load_trained,
    train,
    train_fused,
)

BASE = TrainConfig(iterations=50, batch_size=4, features=8, minibatch_kernels=8, log_every=1, sample_every=25,
                   checkpoint_seconds=0, deterministic=True, precision="fp32")
# How far a member's first steps may be from its solo run's: float32 rounding, or bf16's 8-bit mantissa (measured:
# up to 0.007 on losses near 1.3, where a run of another seed is 0.1 away on average).
FIRST_STEPS_GAP = {"fp32": 1e-5, "bf16": 0.02}
# bf16 where the CPU has bf16 units (emulated elsewhere: 25× slower, and what `auto` never picks there).
PRECISIONS = [("arch1", "fp32"), ("arch2", "fp32")] + ([("arch1", "bf16")] if cpu_bf16_units() else [])


def members(arch: str, seed: int = 0) -> list[TrainConfig]:
    """Three runs differing in every fusable kind of setting: seed, labels, learning rate, latent noise,
    dropout, minibatch weight, instance noise and its decay, augmentation (fixed and adaptive), G's EMA and
    LeCam."""
    base = replace(BASE, arch=arch)
    return [replace(base, seed=seed),
            replace(base, seed=seed + 1, real_label=0.8, fake_label=0.2, lr=1e-4, latent_noise="uniform",
                    augment="color,translation,cutout", augment_p=0.6, g_ema=0.9),
            replace(base, seed=seed + 2, dropout=0.0 if arch == "arch2" else 0.3, minibatch_weight=2.0,
                    instance_noise=0.2, instance_noise_decay=0.3, augment="translation", augment_target=0.6,
                    augment_speed=0.2, lecam=0.1)]


def distance(a: dict, b: dict) -> float:
    """Relative L2 distance of two trainings' weights (both networks)."""
    pairs = [(a[net][k], b[net][k]) for net in ("generator", "discriminator") for k in a[net]
             if a[net][k].is_floating_point() and "running" not in k]
    return float(sum(((x - y) ** 2).sum() for x, y in pairs).sqrt() / sum((x**2).sum() for x, _ in pairs).sqrt())


def loss_gap(a: list[dict], b: list[dict], first: int | None = None) -> list[float]:
    return [abs(x[m] - y[m]) for x, y in list(zip(a, b, strict=True))[:first] for m in ("loss_d", "loss_g")]


@pytest.mark.parametrize(("arch", "precision"), PRECISIONS)
def test_each_fused_member_trains_as_its_solo_run(small_cache, tmp_path, arch, precision):
    """K = 3, 50 iterations, deterministic, in fp32 (and bf16 where it is the CPU's fast path). A grouped
    convolution and a batched product add in another order than a plain one, so the first steps agree to
    float32 rounding (1e-7 on losses near 1). Later a ReLU kink can fall on the other side of that rounding and
    Adam, which normalises each gradient, turns the changed gradient into a full step: in 18 measured members
    the worst final gap was 0.9% of the weights' norm and 0.0035 in mean loss, while a run of another seed, as
    a fusion bug (a member's numbers drawn from a neighbour's generator) would give, is 65-117% away. The rule
    is set between the two and checked on both sides. bf16 rounds each product to 8 bits, so its first steps
    agree to that instead."""
    configs = [replace(c, precision=precision) for c in members(arch)]
    torch.use_deterministic_algorithms(True)
    try:
        solo = [train(c, small_cache, tmp_path / f"solo{k}", device="cpu") for k, c in enumerate(configs)]
        fused = train_fused(configs, small_cache, [tmp_path / f"fused{k}" for k in range(3)], tmp_path / "group",
                            device="cpu")
        other_seed = train(replace(configs[0], seed=7), small_cache, tmp_path / "other", device="cpu")
    finally:
        torch.use_deterministic_algorithms(False)

    def state(result):
        return torch.load(result.files["final_state"], weights_only=True)

    def matches(a, b) -> bool:
        gaps = loss_gap(a.history, b.history)
        return distance(state(a), state(b)) < 0.05 and sum(gaps) / len(gaps) < 0.02

    for alone, beside in zip(solo, fused, strict=True):
        assert max(loss_gap(alone.history, beside.history, first=10)) < FIRST_STEPS_GAP[precision]
        assert matches(alone, beside)
        assert set(state(alone)) == set(state(beside))  # the same form: a solo run's final state
        assert {p.name for p in alone.out_dir.iterdir()} == {p.name for p in beside.out_dir.iterdir()}
    assert not matches(other_seed, fused[0])  # the rule rejects a run that is not the member's own
    assert load_trained(tmp_path / "fused2").generator.generate(3).shape == (3, 3, 32, 32)


def test_a_members_random_numbers_do_not_depend_on_its_neighbours(small_cache):
    member = replace(BASE, arch="arch2", seed=5)  # dropout 0.3: its masks come from its own generator too
    images = small_cache.train_images()
    losses = []
    for neighbour in (replace(member, seed=9, dropout=0.0), replace(member, seed=11, dropout=0.6, lr=1e-3)):
        trainer = Trainer([neighbour, member], images, torch.device("cpu"))
        for _ in range(3):
            trainer.run_step()
        losses.append(trainer.read_stats(3)[0][1])
    alone = Trainer(member, images, torch.device("cpu"))
    for _ in range(3):
        alone.run_step()
    losses.append(alone.read_stats(3)[0][0])
    for other in losses[1:]:
        assert other == pytest.approx(losses[0], abs=1e-5)


def test_a_killed_fused_group_resumes_every_member_from_its_checkpoint(small_cache, tmp_path):
    configs = [replace(c, iterations=12, log_every=4, deterministic=False) for c in members("arch1")]

    def run(folder, **hooks):
        return train_fused(configs, small_cache, [folder / f"m{k}" for k in range(3)], folder / "group",
                           device="cpu", **hooks)

    full = run(tmp_path / "full")

    def kill_after_checkpoint(member, record):
        if record["iteration"] == 8:
            raise KeyboardInterrupt  # after the group's checkpoint at 8: as if the process died

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", on_log=kill_after_checkpoint)
    assert (tmp_path / "killed" / "group" / "checkpoint.pt").exists()
    resumed_at = []
    resumed = run(tmp_path / "killed", on_resume=lambda it, histories: resumed_at.append((it, len(histories[0]))))
    assert resumed_at == [(8, 2)] and not (tmp_path / "killed" / "group" / "checkpoint.pt").exists()
    for a, b in zip(full, resumed, strict=True):
        first, second = (torch.load(r.files["generator"], weights_only=True)["state_dict"] for r in (a, b))
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_only_fusable_settings_may_differ_and_buckets_say_so():
    arch1 = TrainConfig(arch="arch1")
    assert fusion_bucket(arch1) == fusion_bucket(replace(arch1, seed=3, lr=1e-3, dropout=0.3, latent_noise="uniform"))
    assert fusion_bucket(arch1) != fusion_bucket(replace(arch1, batch_size=8))
    assert fusion_bucket(arch1) != fusion_bucket(replace(arch1, iterations=10_000))  # a bucket ends together
    with pytest.raises(PipelineError, match=r"^runs differing in batch_size \(16 against 8\) cannot be trained "):
        Trainer([arch1, replace(arch1, batch_size=8)], torch.zeros(40, 3, 32, 32, dtype=torch.uint8).numpy(),
                torch.device("cpu"))


def test_a_training_whose_tracking_failed_resumes_at_its_end_and_trains_nothing_again(small_cache, tmp_path):
    """MLflow down when a training ends: its step fails, and the retry must not pay for the training again."""
    config = replace(members("arch1")[0], iterations=12, log_every=4, deterministic=False)

    def tracking_down(results):
        raise ConnectionError("MLflow is down")

    with pytest.raises(ConnectionError):
        train(config, small_cache, tmp_path, device="cpu", on_trained=tracking_down)
    first = torch.load(tmp_path / "generator.pt", weights_only=True)["state_dict"]
    resumed_at, logged = [], []
    train(config, small_cache, tmp_path, device="cpu", on_log=logged.append,
          on_resume=lambda it, histories: resumed_at.append((it, len(histories[0]))))
    assert resumed_at == [(12, 3)] and logged == []  # at the end, with its three records; no step trained
    assert not (tmp_path / "checkpoint.pt").exists()
    second = torch.load(tmp_path / "generator.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)
