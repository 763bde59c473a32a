"""DiffAugment, G's EMA and LeCam: known answers for each policy, and what a training keeps when they are on."""

from dataclasses import replace

import pytest
import torch

from flower_pipeline.augment import DRAWS, POLICIES, ada_adjust, diff_augment, parse_policies, policy_mask
from flower_pipeline.errors import PipelineError
from flower_pipeline.training import TrainConfig, train


def _augment(x: torch.Tensor, uniform: torch.Tensor, *policies: str, p: float = 1.0) -> torch.Tensor:
    return diff_augment(x[None], uniform[None], policy_mask([policies], x.device), torch.tensor([p]))[0]


def _uniform(batch: int, **values: float) -> torch.Tensor:
    """Uniform numbers with the named draws fixed: brightness, saturation, contrast, shift_h, shift_w,
    cut_top, cut_left; apply-or-not draws 0 (always applied at p > 0)."""
    names = ("brightness", "saturation", "contrast", "shift_h", "shift_w", "cut_top", "cut_left")
    u = torch.zeros(batch, DRAWS)
    u[:, :7] = torch.tensor([values.get(n, 0.5) for n in names])
    return u


def test_translation_moves_the_image_and_fills_with_zeros():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16) / 1000
    # shift 2 of at most 2 (1/8 of 16): uniform 0.99 → the top of [-2, 2]; 0.5 → 0.
    moved = _augment(x, _uniform(2, shift_h=0.99, shift_w=0.5), "translation")
    torch.testing.assert_close(moved[:, :, :14], x[:, :, 2:])  # row r shows row r + 2
    assert (moved[:, :, 14:] == 0).all()
    same = _augment(x, _uniform(2), "translation")  # shift 0
    torch.testing.assert_close(same, x)


def test_cutout_zeroes_a_square_of_half_the_side():
    x = torch.ones(1, 3, 16, 16)
    cut = _augment(x, _uniform(1), "cutout")
    assert int((cut[0, 0] == 0).sum()) == 8 * 8 and (cut[:, 0] == cut[:, 2]).all()  # one hole, every channel


def test_color_changes_brightness_saturation_and_contrast_and_p_0_changes_nothing():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    neutral = _uniform(4)  # brightness +0, saturation ×1, contrast ×1
    torch.testing.assert_close(_augment(x, neutral, "color"), x)
    brighter = _augment(x, _uniform(4, brightness=0.9), "color")
    torch.testing.assert_close(brighter, x + 0.4)
    grey = _augment(x, _uniform(4, saturation=0.0), "color")
    torch.testing.assert_close(grey[:, 0], grey[:, 1])  # saturation 0: every channel the mean
    for policies in (POLICIES, ()):
        off = _augment(x, torch.rand(4, DRAWS), *policies, p=0.0 if policies else 1.0)
        assert torch.equal(off, x)  # p = 0, or no policy: the images untouched


def test_augmentation_is_differentiable_so_g_learns_through_it():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    _augment(x, torch.rand(4, DRAWS), *POLICIES).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_each_member_augments_by_its_own_policies():
    x = torch.rand(2, 4, 3, 16, 16)
    out = diff_augment(x, torch.rand(2, 4, DRAWS), policy_mask([("cutout",), ()], x.device), torch.tensor([1.0, 1.0]))
    assert not torch.equal(out[0], x[0]) and torch.equal(out[1], x[1])


@pytest.mark.parametrize("text", ["colour", "color,color", "flip"])
def test_unknown_policies_are_one_line(text):
    with pytest.raises(PipelineError, match="augment takes a comma-separated list of color, translation, cutout"):
        parse_policies(text)
    with pytest.raises(PipelineError):
        TrainConfig(augment=text).resolved()


def test_with_g_ema_the_ema_generator_is_the_output_and_the_state_keeps_both(small_cache, tmp_path):
    config = TrainConfig(iterations=20, batch_size=4, features=8, minibatch_kernels=8, log_every=5,
                         checkpoint_seconds=0, g_ema=0.9)
    result = train(config, small_cache, tmp_path / "ema", device="cpu")
    output = torch.load(result.files["generator"], weights_only=True)["state_dict"]
    state = torch.load(result.files["final_state"], weights_only=True)
    assert all(torch.equal(output[k], state["generator_ema"][k]) for k in output)
    assert not all(torch.equal(output[k], state["generator"][k]) for k in output)  # the average, not the last
    plain = train(replace(config, g_ema=0.0), small_cache, tmp_path / "plain", device="cpu")
    assert "generator_ema" not in torch.load(plain.files["final_state"], weights_only=True)


def test_ada_moves_p_one_step_towards_what_d_says_of_the_real_images():
    """Sure of every real image (r_t = 1 > 0.6): up a step; doubtful of all (r_t = -1): down; within [0, 1];
    a run with step 0 (ADA off) keeps its p."""
    p, target = torch.tensor([0.5, 0.5, 0.0, 0.95, 0.5]), torch.full((5,), 0.6)
    step = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.0])
    logits = torch.tensor([3.0, -3.0, -3.0, 3.0, 3.0]).repeat(4, 1)  # B×K: 4 real images each
    torch.testing.assert_close(ada_adjust(p, logits, target, step), torch.tensor([0.6, 0.4, 0.0, 1.0, 0.5]))
    mixed = torch.tensor([[1.0], [1.0], [1.0], [-1.0]])  # r_t = 0.5, below 0.6: down
    torch.testing.assert_close(ada_adjust(torch.tensor([0.5]), mixed, torch.tensor([0.6]), torch.tensor([0.1])),
                               torch.tensor([0.4]))


def test_ada_raises_p_while_d_memorizes_and_a_resumed_training_keeps_it(small_cache, tmp_path):
    """40 random images: D soon tells them from G's, r_t goes above 0.6 and p must rise from 0. Towards a target
    D cannot pass (1.0), p can only fall. The checkpoint keeps p: a resumed training ends where an unbroken one
    does."""
    config = TrainConfig(iterations=100, batch_size=8, features=8, minibatch_kernels=8, log_every=10,
                         checkpoint_seconds=0, augment="color,translation,cutout", augment_p=0.0,
                         augment_target=0.6, augment_speed=0.4)  # from 0 to 1 in 400 images: 0.02 a step
    rising = train(config, small_cache, tmp_path / "rising", device="cpu")
    assert rising.history[0]["augment_p"] == 0.0 and rising.history[-1]["augment_p"] > 0.1  # window averages
    falling = train(replace(config, augment_p=1.0, augment_target=1.0), small_cache, tmp_path / "falling",
                    device="cpu")
    assert falling.history[-1]["augment_p"] < 0.5
    assert "augment_p" not in train(replace(config, augment_target=0.0), small_cache, tmp_path / "fixed",
                                    device="cpu").history[-1]

    def killed(record):
        if record["iteration"] == 50:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, small_cache, tmp_path / "resumed", device="cpu", on_log=killed)
    resumed = train(config, small_cache, tmp_path / "resumed", device="cpu")
    assert [h["augment_p"] for h in resumed.history] == [h["augment_p"] for h in rising.history]
    final_p = [torch.load(r.files["final_state"], weights_only=True)["augment_p"] for r in (rising, resumed)]
    assert torch.equal(*final_p)


def test_ada_needs_augment():
    with pytest.raises(PipelineError, match=r"^augment_target adapts the probability of augment's policies"):
        TrainConfig(augment_target=0.6).resolved()
