"""DiffAugment (Zhao et al., 2020): differentiable augmentations of every image D sees, real and generated.

A small data set lets D memorize its photos; augmenting what D sees, in both the
D and the G update and differentiably (G learns through the augmentation), takes
that away without leaking augmentations into G's images. The policies and their
strengths are the paper's: `color` (brightness ±0.5, saturation ×0–2, contrast
×0.5–1.5), `translation` (up to 1/8 of the side, zero-filled) and `cutout` (a
zeroed square of half the side). Each policy is applied to an image with
probability p.

ADA (Karras et al., 2020) adapts p while training: it rises while D is sure of
the real images it sees (r_t = E[sign(D's logit)] above a target, 0.6 in the
paper: overfitting) and falls while it is not, kept on the device.

Everything is on the device from given uniform numbers, with fixed shapes, so
the step stays one CUDA graph, and a run's augmentations come from its own
generator (a fused member augments as its solo run does). Images are K×B×C×H×W
in [-1, 1]: K runs, each with its own policies and p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from flower_pipeline.errors import PipelineError, quoted

POLICIES = ("color", "translation", "cutout")
DRAWS = 3 + 2 + 2 + len(POLICIES)  # uniforms per image: colour 3, shift 2, cutout centre 2, apply-or-not 1 each
TRANSLATION, CUTOUT = 1 / 8, 1 / 2  # the paper's ratios of the image side


def parse_policies(text: str) -> tuple[str, ...]:
    """'color,translation' → ('color', 'translation'); empty: no augmentation."""
    policies = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or len(set(policies)) < len(policies):
        raise PipelineError(f"augment takes a comma-separated list of {', '.join(POLICIES)}, got {quoted(text)}")
    return policies


def policy_mask(policies: Sequence[tuple[str, ...]], device: torch.device) -> torch.Tensor:
    """K×len(POLICIES): which policies each run applies."""
    return torch.tensor([[p in run for p in POLICIES] for run in policies], device=device)


def diff_augment(x: torch.Tensor, uniform: torch.Tensor, enabled: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x (K×B×C×H×W) augmented by each run's policies, from uniform numbers K×B×DRAWS; `enabled` K×3 policies
    on, `p` (K) the probability of applying each. An image a policy skips is passed through unchanged."""
    k, b, c, h, w = x.shape
    u = uniform.view(k, b, DRAWS, 1, 1, 1)
    apply = (uniform[..., 7:] < p.view(k, 1, 1)) & enabled.view(k, 1, len(POLICIES))  # K×B×3
    apply = apply.view(k, b, len(POLICIES), 1, 1, 1)

    brightness = x + (u[:, :, 0] - 0.5)
    mean = brightness.mean(dim=2, keepdim=True)
    saturated = (brightness - mean) * (u[:, :, 1] * 2) + mean
    mean = saturated.mean(dim=(2, 3, 4), keepdim=True)
    coloured = (saturated - mean) * (u[:, :, 2] + 0.5) + mean
    x = torch.where(apply[:, :, 0], coloured, x)

    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    reach_h, reach_w = int(h * TRANSLATION + 0.5), int(w * TRANSLATION + 0.5)
    shift_h = (uniform[..., 3] * (2 * reach_h + 1)).floor().long() - reach_h  # K×B, in [-reach, reach]
    shift_w = (uniform[..., 4] * (2 * reach_w + 1)).floor().long() - reach_w
    src_r = (rows + shift_h[..., None]).clamp(-1, h)  # -1 and h read the zero border
    src_c = (cols + shift_w[..., None]).clamp(-1, w)
    padded = torch.nn.functional.pad(x.reshape(k * b, c, h, w), (1, 1, 1, 1)).view(k, b, c, h + 2, w + 2)
    flat = padded.flatten(3)  # K×B×C×(H+2)(W+2)
    index = ((src_r[..., :, None] + 1) * (w + 2) + (src_c[..., None, :] + 1)).flatten(2)  # K×B×HW
    moved = flat.gather(3, index[:, :, None, :].expand(k, b, c, h * w)).view(k, b, c, h, w)
    x = torch.where(apply[:, :, 1], moved, x)

    size_h, size_w = int(h * CUTOUT + 0.5), int(w * CUTOUT + 0.5)
    top = (uniform[..., 5] * (h + 1 - size_h % 2)).floor().long() - size_h // 2  # the paper's centre range
    left = (uniform[..., 6] * (w + 1 - size_w % 2)).floor().long() - size_w // 2
    inside_r = (rows >= top[..., None]) & (rows < top[..., None] + size_h)  # K×B×H
    inside_c = (cols >= left[..., None]) & (cols < left[..., None] + size_w)
    hole = (inside_r[..., :, None] & inside_c[..., None, :]).unsqueeze(2)  # K×B×1×H×W
    return torch.where(apply[:, :, 2] & hole, torch.zeros((), device=x.device, dtype=x.dtype), x)


def ada_adjust(p: torch.Tensor, real_logits: torch.Tensor, target: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Each run's next p (K) from D's logits on the real images it saw (B×K): one `step` up while r_t =
    E[sign(logit)] is above `target`, one down while below, within [0, 1]. A run with step 0 keeps its p."""
    overfitting = torch.sign(real_logits).mean(0)
    return (p + torch.sign(overfitting - target) * step).clamp(0, 1)
