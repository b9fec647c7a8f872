"""TimeUNet and its blocks: shapes, exact block outputs, conditioning and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ambiseg.errors import ConfigError
from ambiseg.nets import FullAttention, LinearAttention, SinusoidalEmbedding, TimeUNet, WSConv2d
from ambiseg.nets.blocks import ResBlock

TINY = {"width": 8, "mults": (1, 2), "blocks": 1, "groups": 4, "heads": 1, "head_dim": 8}


def _perturb_head(net: TimeUNet) -> None:
    """Give the zero-initialised output layer weights so the output depends on the input."""
    with torch.no_grad():
        net.head.weight.normal_(generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mults,size", [((1,), 6), ((1, 2), 8), ((1, 2, 4), 16), ((1, 2, 2, 4), 24)])
def test_output_shape_for_every_depth(mults, size):
    net = TimeUNet(3, 2, width=8, mults=mults, blocks=2, groups=4, heads=1, head_dim=8)
    out = net(torch.rand(2, 3, size, size + 8), torch.rand(2))
    assert out.shape == (2, 2, size, size + 8)


def test_untrained_output_is_exactly_zero():
    net = TimeUNet(2, 1, **TINY)
    assert torch.equal(net(torch.rand(3, 2, 16, 16), torch.rand(3)), torch.zeros(3, 1, 16, 16))


def test_output_depends_on_time_and_scalar_time_broadcasts():
    torch.manual_seed(0)
    net = TimeUNet(2, 1, **TINY)
    _perturb_head(net)
    x = torch.rand(2, 2, 16, 16)
    assert not torch.allclose(net(x, torch.full((2,), 0.1)), net(x, torch.full((2,), 0.9)))
    assert torch.allclose(net(x, 0.3), net(x, torch.full((2,), 0.3)))
    assert torch.allclose(net(x, torch.tensor([0.3])), net(x, torch.full((2,), 0.3)))


def test_cond_vec_changes_the_output_and_is_checked():
    torch.manual_seed(0)
    net = TimeUNet(2, 1, cond_dim=6, **TINY)
    _perturb_head(net)
    x, t = torch.rand(2, 2, 16, 16), torch.rand(2)
    assert not torch.allclose(net(x, t, torch.zeros(2, 6)), net(x, t, torch.ones(2, 6)))
    with pytest.raises(ConfigError, match=r"cond_vec of shape \(2, 6\)"):
        net(x, t)
    with pytest.raises(ConfigError, match="cond_dim=6"):
        net(x, t, torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="without cond_dim"):
        TimeUNet(2, 1, **TINY)(x, t, torch.zeros(2, 6))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = TimeUNet(2, 1, cond_dim=3, **TINY)
    _perturb_head(net)
    net(torch.rand(2, 2, 16, 16), torch.rand(2), torch.rand(2, 3)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_inputs_and_options_raise_config_errors():
    net = TimeUNet(2, 1, width=8, mults=(1, 2, 4), groups=4, heads=1, head_dim=8)
    with pytest.raises(ConfigError, match="divisible by 4"):
        net(torch.rand(1, 2, 18, 16), torch.rand(1))
    with pytest.raises(ConfigError, match=r"\[N, 2, H, W\]"):
        net(torch.rand(1, 3, 16, 16), torch.rand(1))
    with pytest.raises(ConfigError, match="one time per sample"):
        net(torch.rand(2, 2, 16, 16), torch.rand(3))
    with pytest.raises(ConfigError, match="groups=8 must divide"):
        TimeUNet(2, 1, width=12, groups=8)
    with pytest.raises(ConfigError, match="mults"):
        TimeUNet(2, 1, width=8, mults=())
    with pytest.raises(ConfigError, match="width"):
        TimeUNet(2, 1, width=0)


def test_stem_kernel_one_builds_a_pointwise_stem_and_runs():
    torch.manual_seed(0)
    net = TimeUNet(2, 1, width=8, mults=(1, 2), blocks=1, groups=1, heads=1, head_dim=8, stem_kernel=1)
    assert net.stem.kernel_size == (1, 1) and net.stem.padding == (0, 0)
    res_blocks = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert res_blocks and all(b.norm1.num_groups == b.norm2.num_groups == 1 for b in res_blocks)
    _perturb_head(net)
    out = net(torch.rand(2, 2, 16, 16), torch.rand(2))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    assert TimeUNet(2, 1, **TINY).stem.kernel_size == (7, 7)  # the default is unchanged (old checkpoints load)
    assert TimeUNet(2, 1, stem_kernel=3, **TINY).stem.padding == (1, 1)


@pytest.mark.parametrize("kernel", [0, 2, 4, -1, 1.5, "3", True])
def test_even_or_non_integer_stem_kernel_is_refused(kernel):
    with pytest.raises(ConfigError, match="stem_kernel"):
        TimeUNet(2, 1, stem_kernel=kernel, **TINY)


def test_weight_standardised_conv_matches_manual_standardisation_and_ignores_scale():
    torch.manual_seed(0)
    conv = WSConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    w = conv.weight
    flat = w.flatten(1)
    w_std = (
        (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-5)
    ).view_as(w)
    assert torch.allclose(conv(x), F.conv2d(x, w_std, conv.bias, padding=1), atol=1e-5)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(0.3)  # affine change of every filter: standardised weights barely move
    assert torch.allclose(conv(x), before, rtol=1e-2, atol=1e-2)
    assert not torch.allclose(F.conv2d(x, conv.weight, conv.bias, padding=1), before, rtol=1e-2, atol=1e-2)


def _manual_heads(attn, x):
    q, k, v = attn.to_qkv(attn.norm(x)).chunk(3, dim=1)
    n, _, h, w = x.shape

    def split(a):
        return a.reshape(n, attn.heads, attn.head_dim, h * w)

    return split(q), split(k), split(v)


def test_full_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    attn = FullAttention(6, heads=2, head_dim=3)
    x = torch.randn(2, 6, 3, 4)
    q, k, v = _manual_heads(attn, x)
    weights = torch.softmax(torch.einsum("nhdp,nhdq->nhpq", q, k) / math.sqrt(3), dim=-1)
    out = torch.einsum("nhpq,nhdq->nhdp", weights, v).reshape(2, 6, 3, 4)
    assert torch.allclose(attn(x), x + attn.to_out(out), atol=1e-5)


def test_linear_attention_equals_explicit_formula():
    torch.manual_seed(0)
    attn = LinearAttention(6, heads=2, head_dim=3)
    x = torch.randn(2, 6, 3, 4)
    q, k, v = _manual_heads(attn, x)
    q = q.softmax(dim=2) / math.sqrt(3)
    k = k.softmax(dim=3)
    out = torch.einsum("nhdp,nhep,nhdq->nheq", k, v, q).reshape(2, 6, 3, 4)
    assert torch.allclose(attn(x), x + attn.out_norm(attn.to_out(out)), atol=1e-5)


def test_sinusoidal_embedding_values():
    emb = SinusoidalEmbedding(8, scale=1000.0)
    out = emb(torch.tensor([0.0, 0.002]))
    assert torch.allclose(out[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.tensor([10000 ** (-i / 3) for i in range(4)])
    assert torch.allclose(out[1], torch.cat([torch.sin(2 * freqs), torch.cos(2 * freqs)]), atol=1e-6)
