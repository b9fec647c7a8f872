"""Backbones from spec strings: shapes for unet and smp (incl. timm encoders), clear errors."""

from __future__ import annotations

import pytest
import torch

from ambiseg import backbones
from ambiseg.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize(
    "spec, opts, cin, cout, size",
    [
        ("unet", {"widths": (8, 16, 32)}, 1, 32, 32),
        ("unet", {"widths": (8, 16)}, 3, 8, 16),  # out == widths[0]: features, no projection
        ("unet", {}, 1, 32, 32),  # the papers' 32/64/128/192 U-Net
        ("smp:Unet:resnet18", {}, 1, 4, 64),
        ("smp:FPN:resnet18", {}, 3, 2, 64),
        ("smp:Unet:tu-resnet18", {}, 1, 3, 64),
    ],
)
def test_output_shapes(spec, opts, cin, cout, size):
    net = backbones.create(spec, cin, cout, **opts)
    out = net(torch.randn(2, cin, size, size))
    assert out.shape == (2, cout, size, size)
    assert net.out_channels == cout


def test_unet_feature_mode_has_no_projection():
    net = backbones.create("unet", 1, 8, widths=(8, 16))
    assert isinstance(net.head, torch.nn.Identity)


def test_unet_refuses_indivisible_sizes():
    net = backbones.create("unet", 1, 4, widths=(4, 8, 16))
    with pytest.raises(ConfigError, match="divisible by 4"):
        net(torch.randn(1, 1, 18, 18))


def test_bad_specs():
    with pytest.raises(UnknownNameError, match="did you mean 'unet'"):
        backbones.create("unte", 1, 1)
    with pytest.raises(ConfigError, match="unknown smp architecture 'Unt'.*did you mean 'Unet'"):
        backbones.create("smp:Unt:resnet18", 1, 1)
    with pytest.raises(ConfigError, match="unknown smp encoder 'resnet19'"):
        backbones.create("smp:Unet:resnet19", 1, 1)


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_unet_norm_option_adds_a_norm_after_every_conv(norm):
    net = backbones.create("unet", 1, 4, widths=(8, 12), convs=2, norm=norm)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [
        m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.InstanceNorm2d))
    ]
    assert len(norms) == len(convs) == 6  # 2 levels x 2 convs down, 1 block x 2 convs up
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 4, 16, 16)


def test_unet_unknown_norm_is_refused():
    with pytest.raises(ConfigError, match="unet norm must be one of batch, group, instance"):
        backbones.create("unet", 1, 4, widths=(8, 12), norm="layer")
