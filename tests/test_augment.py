"""DiffAugment, G's EMA and LeCam: known answers for each policy, and what a training keeps when they are on."""

from dataclasses import replace

import pytest
import torch

from flower_pipeline.augment import DRAWS, POLICIES, diff_augment, parse_policies, policy_mask
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
