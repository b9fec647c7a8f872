"""Flow-SSN: the loss on hand-computed cases, both velocity fields, joint training and the presets."""

from __future__ import annotations

import math

import pytest
import torch
from smoke_methods import woken_smoke_build
from torch import nn

import ambiseg
from ambiseg import data
from ambiseg.checkpoint import load_method, save_checkpoint
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.methods.flow_ssn import (
    FlowSSNBase,
    FlowSSNFlow,
    mc_categorical_nll,
    one_hot,
    straight_path,
)
from ambiseg.recipes import method_config
from ambiseg.train import Trainer

TINY_BASE = {"width": 8, "mults": (1, 2), "groups": 4, "heads": 1, "head_dim": 8}
TINY_FLOW = {"width": 8, "mults": (1, 1), "groups": 1, "heads": 1, "head_dim": 8}


def _batch(b: int = 2, a: int = 3, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 1, size, size, generator=g),
        "masks": (torch.rand(b, a, size, size, generator=g) > 0.5).to(torch.uint8),
    }


class ConstantLogits(nn.Module):
    """Stands in for the flow network: the same class logits whatever the state and time."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits  # [K, H, W]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


# ---- the loss -----------------------------------------------------------------------------------


def test_mc_nll_matches_a_hand_computed_two_draw_case():
    # one image, two pixels, both foreground; two base draws with these class logits (bg, fg):
    #   draw 1: pixel a (0, 0) -> p(fg) = 1/2;  pixel b (0, ln 3) -> p(fg) = 3/4
    #   draw 2: pixel a (ln 3, 0) -> p(fg) = 1/4;  pixel b (0, 0) -> p(fg) = 1/2
    ln3 = math.log(3.0)
    logits = torch.tensor([[[[[0.0, 0.0]], [[0.0, ln3]]], [[[ln3, 0.0]], [[0.0, 0.0]]]]])  # [1, 2, 2, 1, 2]
    target = one_hot(torch.ones(1, 1, 1, 2))
    log_p1 = (math.log(1 / 2) + math.log(3 / 4)) / 2  # the pixel mean of log p, draw 1
    log_p2 = (math.log(1 / 4) + math.log(1 / 2)) / 2
    expected = -math.log((math.exp(log_p1) + math.exp(log_p2)) / 2)
    assert mc_categorical_nll(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_one_draw_gives_the_mean_per_pixel_cross_entropy():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.0, 1.0]]]]).unsqueeze(1)  # [1, 1, 2, 1, 2]
    target = one_hot(torch.tensor([[[[0.0, 1.0]]]]))  # pixel a background, pixel b foreground
    # p(bg | a) = e^2 / (e^2 + 1); p(fg | b) = e / (e + e^-1)
    ce_a = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce_b = -math.log(math.exp(1) / (math.exp(1) + math.exp(-1)))
    assert mc_categorical_nll(logits, target).item() == pytest.approx((ce_a + ce_b) / 2, rel=1e-6)


def test_the_training_path_and_one_hot_masks():
    u, y = torch.zeros(2, 2, 1, 1), one_hot(torch.tensor([[[[1.0]]], [[[0.0]]]]))
    assert y[:, :, 0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    y_t = straight_path(u, y, torch.tensor([0.25, 1.0]))
    assert y_t[:, :, 0, 0].tolist() == [[0.0, 0.25], [1.0, 0.0]]


def test_the_transport_loss_against_a_hand_computed_value():
    """With a flow that predicts constant logits the loss no longer depends on t or the base draw:
    every pixel of every annotator is foreground, the logits say p(fg) = 3/4 -> loss -ln(3/4)."""
    prior, flow = FlowSSNBase(**TINY_BASE), FlowSSNFlow(mc_samples=4, **TINY_FLOW)
    flow.net = ConstantLogits(torch.tensor([0.0, math.log(3.0)]).view(2, 1, 1).expand(2, 8, 8))
    batch = {"image": torch.rand(3, 1, 8, 8), "masks": torch.ones(3, 2, 8, 8)}
    terms = flow.loss(batch, prior)
    assert set(terms) == {"loss", "ce"}
    assert terms["loss"].item() == pytest.approx(-math.log(3 / 4), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(-math.log(3 / 4), rel=1e-6)


def test_the_joint_loss_trains_the_base_through_its_draws():
    method = woken_smoke_build("flow-ssn", transport={"mc_samples": 2})
    params = method.begin_stage("joint")
    assert method.stages == ("joint",) and len(params) == len(list(method.parameters()))
    torch.manual_seed(0)
    method.loss(_batch(), "joint")["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.prior.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.transport.parameters())


def test_one_smoke_training_step_leaves_every_weight_finite():
    torch.manual_seed(0)
    method = ambiseg.build("flow-ssn", preset="smoke", train={"joint": {"steps": 1}})
    before = [p.detach().clone() for p in method.parameters()]
    train = data.build("synthetic", size=16, num_annotators=2, sizes=(4, 1, 1))
    history = Trainer(method, train, progress=False, seed=0).fit().history
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    assert all(torch.isfinite(p).all() for p in method.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(method.parameters(), before, strict=True))


# ---- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("velocity", ["start", "endpoint"])
def test_sample_shapes_and_probabilities(velocity):
    method = woken_smoke_build("flow-ssn", transport={"velocity": velocity})
    images = torch.rand(2, 1, 16, 16)
    state = method.prior.condition(images)
    draws = method.prior.sample(state, 5, generator=torch.Generator().manual_seed(0))
    assert state.mean.shape == (2, 2, 16, 16) and draws.shape == (2, 5, 2, 16, 16)
    start = method.transport.initial_state(draws.flatten(0, 1))
    assert start.shape == ((10, 4, 16, 16) if velocity == "start" else (10, 2, 16, 16))
    assert method.transport(start, torch.rand(10), None).shape == start.shape
    out = method.sample(images, 5, generator=torch.Generator().manual_seed(1), max_batch=4)
    assert out.shape == (2, 5, 16, 16) and out.min() >= 0 and out.max() <= 1
    again = method.sample(images, 5, generator=torch.Generator().manual_seed(1), max_batch=4)
    assert torch.equal(out, again)


def test_the_start_field_is_the_public_euler_rule():
    """Euler on dy/dt = softmax(f(y, t)) - u from y_0 = u, by hand, equals Method.sample."""
    method = woken_smoke_build("flow-ssn", transport={"velocity": "start"}, sampler={"name": "euler", "steps": 4})
    images = torch.rand(1, 1, 16, 16)
    out = method.sample(images, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        u = method.prior.sample(method.prior.condition(images), 3, generator=torch.Generator().manual_seed(2))[0]
        y, h = u.clone(), 0.25
        for k in range(4):
            t = torch.full((3,), k * h)
            y = y + h * (method.transport.logits(y, t, None).softmax(dim=1) - u)
    torch.testing.assert_close(out[0], ((y[:, 1] - y[:, 0] + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)


def test_foreground_probability_is_the_simplex_value_and_the_public_argmax():
    flow = FlowSSNFlow(**TINY_FLOW)
    on_simplex = torch.tensor([0.3, 0.7]).view(1, 2, 1, 1)
    assert flow.to_probs(on_simplex).item() == pytest.approx(0.7)
    states = torch.randn(50, 2, 3, 3) * 3
    probs = flow.to_probs(states)
    assert torch.equal(probs > 0.5, states.argmax(dim=1) == 1) and probs.min() >= 0 and probs.max() <= 1


def test_a_learned_base_scale_and_an_image_conditioned_flow_from_noise():
    base = FlowSSNBase(std=0.0, **TINY_BASE)
    with torch.no_grad():
        base.net.head.weight.normal_(std=0.1)
    state = base.condition(torch.rand(2, 1, 16, 16))
    assert state.scale.shape == (2, 2, 16, 16) and (state.scale > 0).all() and state.scale.std() > 0
    method = ambiseg.compose(
        prior={"name": "noise", "channels": 2},
        transport={"name": "flow-ssn-flow", "image_input": True, **TINY_FLOW},
        sampler={"name": "euler", "steps": 2},
    )
    assert method.stages == ("joint",) and method.transport.net.in_channels == 3
    assert torch.isfinite(method.loss(_batch(), "joint")["loss"])
    assert method.sample(torch.rand(1, 1, 16, 16), 2).shape == (1, 2, 16, 16)


def test_a_checkpoint_of_the_start_field_rebuilds_the_same_method(tmp_path):
    method = woken_smoke_build("flow-ssn", transport={"velocity": "start"})
    save_checkpoint(tmp_path / "m.safetensors", method, method.config, stage_index=1)
    rebuilt, _ = load_method(tmp_path / "m.safetensors")
    assert rebuilt.config == method.config and rebuilt.transport.velocity == "start"
    images = torch.rand(1, 1, 16, 16)
    same = [m.sample(images, 2, generator=torch.Generator().manual_seed(3)) for m in (method, rebuilt)]
    assert torch.equal(*same)


# ---- compatibility and options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prior", "transport", "match"),
    [
        ("gtr", "flow-ssn-flow", "flow-ssn-base"),
        ("noise", "flow-ssn-flow", "1-channel"),
        ("probunet-latent", "flow-ssn-flow", "flow-ssn-base"),
        ("flow-ssn-base", "sfm", "2 channels"),
        ("flow-ssn-base", "cimd", "starts from noise"),
        ("flow-ssn-base", "identity", "carries mask"),
    ],
)
def test_a_mismatched_prior_is_refused(prior, transport, match):
    sampler = {"sfm": "euler", "flow-ssn-flow": "euler", "cimd": "ddpm"}.get(transport, "direct")
    with pytest.raises(CompatibilityError, match=match):
        ambiseg.compose(prior=prior, transport=transport, sampler=sampler)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="did you mean 'start'"):
        ambiseg.build("flow-ssn", preset="smoke", transport={"velocity": "stat"})
    with pytest.raises(ConfigError, match="mc_samples"):
        ambiseg.build("flow-ssn", preset="smoke", transport={"mc_samples": 0})
    with pytest.raises(ConfigError, match="std"):
        ambiseg.build("flow-ssn", preset="smoke", prior={"std": -1.0})


# ---- presets --------------------------------------------------------------------------------------


def test_paper_lidc_builds_the_published_sizes():
    method = ambiseg.build("flow-ssn", preset="paper-lidc")
    config = method.config
    base, flow = config["prior"], config["transport"]
    assert (base["width"], tuple(base["mults"]), base["blocks"], base["std"]) == (32, (1, 2, 4, 8), 1, 1.0)
    assert (flow["width"], tuple(flow["mults"]), flow["blocks"], flow["mc_samples"]) == (16, (1, 1, 1), 1, 1)
    assert flow["velocity"] == "start" and config["sampler"] == {"name": "euler", "steps": 50, "t0": None, "t1": None}
    joint = config["train"]["joint"]
    assert (joint["optimizer"], joint["lr"], joint["weight_decay"], joint["batch_size"]) == ("adamw", 1e-4, 1e-4, 32)
    assert (joint["warmup"], joint["ema"], joint["grad_clip"], joint["epochs"]) == (2000, 0.9999, 10.0, 1001)
    assert (config["in_channels"], config["image_size"]) == (1, 128)
    # ambiseg's ResBlock U-Net at the public widths (the public U-Nets: 14,290,660 and 150,850)
    count = [sum(p.numel() for p in m.parameters()) for m in (method.prior, method.transport)]
    assert count == [6_248_034, 90_402]
    with torch.no_grad():
        state = method.prior.condition(torch.rand(1, 1, 128, 128))
        assert state.mean.shape == (1, 2, 128, 128)
        assert method.transport(torch.zeros(1, 4, 128, 128), torch.tensor([0.5]), None).shape == (1, 4, 128, 128)


def test_paper_isic3_takes_the_public_refuge_sizes():
    config = method_config("flow-ssn", preset="paper-isic3")
    assert (config["in_channels"], config["image_size"]) == (3, 256)
    assert (config["prior"]["width"], config["prior"]["mults"], config["prior"]["blocks"]) == (32, (1, 2, 2, 4, 6), 2)
    assert (config["transport"]["width"], config["transport"]["mults"]) == (32, (1, 1, 1, 1))
    assert config["train"]["joint"]["batch_size"] == 16 and config["train"]["joint"]["ema"] == 0.999


def test_cpu_lidc_v2_follows_the_budget_rule():
    v1 = method_config("flow-ssn", preset="cpu-lidc")["train"]["joint"]
    v2 = method_config("flow-ssn", preset="cpu-lidc-v2")["train"]["joint"]
    assert (v1["steps"], v1["batch_size"]) == (1500, 16)
    assert (v2["steps"], v2["val_every"], v2["val_images"], v2["val_samples"]) == (2250, 400, 200, 8)
    assert (v2["schedule"], v2["warmup"], v2["select"]) == ("cosine", 100, "last-best")
