import pytest
import torch

from flower_pipeline.models import ARCHITECTURES, MinibatchDiscrimination, build_models


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(arch, size, channels):
    generator, discriminator = build_models(arch, channels=channels, image_size=size, features=8,
                                            minibatch_kernels=10 if arch == "arch1" else 0)
    images = generator(torch.randn(3, 100))
    assert images.shape == (3, channels, size, size) and images.abs().max() <= 1
    assert discriminator(images).shape == (3,)


def test_architecture1_generator_is_one_layer_deeper():
    def layers(model):
        return sum(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear) for m in model.modules())

    g1, d1 = build_models("arch1", channels=3, image_size=64, minibatch_kernels=100)
    g2, d2 = build_models("arch2", channels=3, image_size=64, dropout=0.3)
    assert layers(g1) == layers(g2) + 1
    assert all(isinstance(m, torch.nn.ConvTranspose2d) for m in g1.modules() if isinstance(m, torch.nn.Conv2d))
    assert any(isinstance(m, torch.nn.Upsample) for m in g2.modules())
    assert any(isinstance(m, MinibatchDiscrimination) for m in d1.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in d2.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in d1.modules())


def test_minibatch_discrimination_responds_to_batch_diversity():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(32, kernels=8, kernel_dim=4)
    same = torch.randn(1, 32).repeat(6, 1)
    varied = torch.randn(6, 32) * 3
    o_same, o_varied = layer(same)[:, 32:], layer(varied)[:, 32:]
    assert torch.allclose(o_same, torch.full_like(o_same, 5.0))  # exp(0) from each of the 5 others
    assert o_varied.mean() < 0.5 * o_same.mean()
    assert torch.equal(layer(varied)[:, :32], varied)  # f(x) passes through unchanged
    doubled = MinibatchDiscrimination(32, kernels=8, kernel_dim=4, weight=2.0)
    doubled.T = layer.T
    assert torch.allclose(doubled(same)[:, 32:], 2 * o_same)
