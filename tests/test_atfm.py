"""ATFM recipes: every composition builds and samples, stages train what they should, presets."""

from __future__ import annotations

import pytest
import torch

import ambiseg
from ambiseg.errors import ConfigError
from ambiseg.methods.atfm import PRESET_NAMES
from ambiseg.registry import methods

RECIPES = ("atfm", "atfm-nosf", "act-gtr", "sfm-noise", "sfm-noise-nosf")
STAGES = {
    "atfm": ("prior", "transport"),
    "atfm-nosf": ("prior", "transport"),
    "act-gtr": ("prior",),
    "sfm-noise": ("transport",),
    "sfm-noise-nosf": ("transport",),
}


def _disks(n=4, size=16, seed=0):
    """`n` noisy images of a bright disk; annotator 0 marks the disk, annotator 1 a disk 2 px wider."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * size / 3 + size / 3).tolist()
        r = float(torch.rand((), generator=g)) * size / 8 + size / 6
        d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        images.append(((d <= r).float() * 0.6 + 0.2 + 0.1 * torch.randn(size, size, generator=g)).clamp(0, 1))
        masks.append(torch.stack([d <= r, d <= r + 2]).to(torch.uint8))
    return {"image": torch.stack(images)[:, None], "masks": torch.stack(masks)}


def _fit(method, stage, batch, steps, lr):
    params = method.begin_stage(stage)
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = method.loss(batch, stage)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_builds_and_samples_probabilities(name):
    method = ambiseg.build(name, preset="smoke")
    assert method.stages == STAGES[name] and method.name == name
    out = method.sample(torch.rand(2, 1, 16, 16), 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    assert set(methods.get(name).info["recipe"].presets) == set(PRESET_NAMES)


def test_ssn_is_an_alias_of_act_gtr_and_nosf_recipes_drop_the_sf_term():
    assert ambiseg.build("ssn", preset="smoke").name == "act-gtr"
    # the recipes were "sfm"/"sfm-nosf" (the transport's own name) until 0.1; the old names resolve
    assert ambiseg.build("sfm", preset="smoke").name == "sfm-noise"
    assert ambiseg.build("sfm-nosf", preset="smoke").name == "sfm-noise-nosf"
    for name in ("atfm-nosf", "sfm-noise-nosf"):
        for preset in PRESET_NAMES:
            assert methods.get(name).info["recipe"].config(preset)["transport"]["alpha"] == 0.0
    assert ambiseg.build("atfm", preset="smoke").transport.alpha == 1e-3


def test_same_seed_same_samples_and_new_seed_new_samples():
    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="smoke")
    with torch.no_grad():
        method.transport.net.head.weight.normal_(std=0.1)
    images = torch.rand(2, 1, 16, 16)
    a, b, c = (method.sample(images, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize(
    "sampler,cls",
    [({"name": "heun", "steps": 4}, "Heun"), ("dopri5", "Dopri5"), ({"name": "midpoint", "steps": 3}, "Midpoint")],
)
def test_sampler_overridable_by_name(sampler, cls):
    method = ambiseg.build("atfm", preset="smoke", sampler=sampler)
    assert type(method.sampler).__name__ == cls
    out = method.sample(torch.rand(1, 1, 16, 16), 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 16, 16)
    assert ambiseg.build("atfm", preset="smoke", sampler={"steps": 7}).sampler.steps == 7


def test_stage_two_trains_the_st_net_and_leaves_gtr_unchanged():
    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="smoke")
    prior_before = {k: v.clone() for k, v in method.prior.state_dict().items()}
    net_before = {k: v.clone() for k, v in method.transport.state_dict().items()}
    _fit(method, "transport", _disks(), steps=3, lr=1e-2)
    assert all(torch.equal(v, method.prior.state_dict()[k]) for k, v in prior_before.items())
    assert not all(torch.equal(v, method.transport.state_dict()[k]) for k, v in net_before.items())
    assert not method.prior.training and method.transport.training


def test_both_stages_reduce_their_loss_when_overfitting_a_few_images():
    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="smoke")
    batch = _disks()
    prior_losses = _fit(method, "prior", batch, steps=40, lr=3e-3)
    assert sum(prior_losses[-5:]) < 0.8 * sum(prior_losses[:5])
    transport_losses = _fit(method, "transport", batch, steps=40, lr=3e-3)
    assert sum(transport_losses[-5:]) < 0.8 * sum(transport_losses[:5])


def test_rank_zero_and_mean_nll_compose():
    method = ambiseg.build("act-gtr", preset="smoke", prior={"rank": 0, "loss_form": "mean-nll"})
    assert method.prior.factor_head is None
    assert method.sample(torch.rand(1, 1, 16, 16), 2).shape == (1, 2, 16, 16)
    assert torch.isfinite(method.loss(_disks(n=2), "prior")["loss"])


def test_bad_option_values_raise_config_errors():
    with pytest.raises(ConfigError, match="sf_loss"):
        ambiseg.build("atfm", preset="smoke", transport={"sf_loss": "hardest"})
    with pytest.raises(ConfigError, match="loss_form"):
        ambiseg.build("atfm", preset="smoke", prior={"loss_form": "elbo"})
    with pytest.raises(ConfigError, match="no preset 'paper'"):
        ambiseg.build("atfm", preset="paper")


def test_config_round_trip_rebuilds_the_same_sampler():
    method = ambiseg.build("atfm", preset="smoke", sampler={"name": "heun", "steps": 3})
    clone = ambiseg.Method.from_config(method.config)
    clone.load_state_dict(method.state_dict())
    images = torch.rand(1, 1, 16, 16)
    assert torch.equal(
        method.sample(images, 2, generator=torch.Generator().manual_seed(0)),
        clone.sample(images, 2, generator=torch.Generator().manual_seed(0)),
    )


def test_paper_presets_hold_the_paper_hyperparameters():
    lidc = methods.get("atfm").info["recipe"].config("paper-lidc")
    isic = methods.get("atfm").info["recipe"].config("paper-isic3")
    assert lidc["prior"]["rank"] == 10 and lidc["prior"]["mc_samples"] == 20
    assert lidc["prior"]["widths"] == (32, 64, 128, 192)
    assert (lidc["transport"]["width"], lidc["transport"]["alpha"], lidc["sampler"]["steps"]) == (128, 1e-3, 25)
    assert (isic["transport"]["width"], isic["transport"]["alpha"], isic["sampler"]["steps"]) == (256, 1e-4, 50)
    assert lidc["train"]["prior"] == {
        "optimizer": "adamw",
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "epochs": 1000,
        "batch_size": 6,
    }
    assert (lidc["train"]["transport"]["epochs"], lidc["train"]["transport"]["batch_size"]) == (200, 6)
    assert (isic["train"]["prior"]["epochs"], isic["train"]["transport"]["epochs"]) == (400, 120)
    assert (isic["train"]["prior"]["batch_size"], isic["train"]["transport"]["batch_size"]) == (6, 1)
    assert isic["in_channels"] == 3


@pytest.mark.parametrize("preset", ["paper-lidc", "paper-isic3"])
def test_paper_presets_follow_the_public_code_where_the_paper_is_silent(preset):
    """GTR batch 6 (SFM batch 1 on ISIC3) and the public ST-Net's 1x1 stem and single GroupNorm group."""
    # building the LIDC model is quick (~0.5 s); the 152 M-parameter ISIC3 one is checked without building
    if preset == "paper-lidc":
        method = ambiseg.build("atfm", preset=preset)
        config = method.config
        assert method.transport.net.stem.kernel_size == (1, 1)
        assert method.transport.net.mid_block1.norm1.num_groups == 1
    else:
        config = methods.get("atfm").info["recipe"].config(preset)
    assert config["train"]["prior"]["batch_size"] == 6
    assert config["train"]["transport"]["batch_size"] == (6 if preset == "paper-lidc" else 1)
    assert (config["transport"]["stem_kernel"], config["transport"]["groups"]) == (1, 1)
    for name in ("act-gtr", "atfm-nosf", "tdpm"):  # every recipe with ATFM's GTR stage trains it with batch 6
        assert methods.get(name).info["recipe"].config(preset)["train"]["prior"]["batch_size"] == 6, name
    for name in ("atfm-nosf", "sfm-noise", "sfm-noise-nosf"):
        transport = methods.get(name).info["recipe"].config(preset)["transport"]
        assert (transport["stem_kernel"], transport["groups"]) == (1, 1), name


def test_small_presets_keep_the_default_st_net_stem_and_groups():
    for preset in ("smoke", "cpu"):
        net = ambiseg.build("atfm", preset=preset).transport.net
        assert net.stem.kernel_size == (7, 7), preset
    assert ambiseg.build("atfm", preset="cpu").config["transport"]["groups"] == 4


def test_paper_lidc_st_net_has_about_38_5_million_parameters():
    method = ambiseg.build("atfm", preset="paper-lidc")
    count = sum(p.numel() for p in method.transport.parameters())
    assert abs(count - 38.5e6) / 38.5e6 < 0.01, count
    with torch.no_grad():  # one small forward: the paper-size net runs on 32 px inputs
        v = method.transport(torch.rand(1, 1, 32, 32), torch.rand(1), torch.rand(1, 1, 32, 32))
    assert v.shape == (1, 1, 32, 32)


def test_paper_recipes_drop_exactly_the_gtr_departures_of_cpu_lidc():
    departures = {"centre_factor", "mean_weight", "temperature"}
    for ours, paper in (("atfm", "atfm-paper"), ("act-gtr", "act-gtr-paper")):
        a, b = (ambiseg.build(n, preset="cpu-lidc").config for n in (ours, paper))
        assert {k for k in a["prior"] if a["prior"][k] != b["prior"][k]} == departures
        assert [b["prior"][k] for k in ("centre_factor", "mean_weight", "temperature")] == [False, 0.0, 1.0]
        rest = [{k: v for k, v in c.items() if k not in ("prior", "method")} for c in (a, b)]
        assert rest[0] == rest[1]


def test_matched_coupling_pairs_each_draw_with_its_nearest_annotator_once():
    from ambiseg.methods.sfm import matched_order

    masks = torch.zeros(1, 3, 4, 4)
    masks[0, 0, :2], masks[0, 1, 2:], masks[0, 2, :, :2] = 1, 1, 1  # top half, bottom half, left half
    draws = masks[:, [2, 0, 1]] * 0.8 + 0.1  # draw i is a blurred copy of annotator (2, 0, 1)[i]
    assert matched_order(draws, masks).tolist() == [[2, 0, 1]]
    # a draw between two masks still gets one annotator of its own: the pairing is a permutation
    order = matched_order(torch.rand(5, 4, 1, 8, 8), torch.rand(5, 4, 8, 8).round())
    assert (order.sort(dim=1).values == torch.arange(4)).all()


def test_matched_coupling_trains_and_independent_coupling_is_the_default():
    batch = _disks()
    independent = ambiseg.build("atfm", preset="smoke")
    assert independent.transport.coupling == "independent"
    with pytest.raises(ConfigError, match="coupling.*did you mean 'matched'"):
        ambiseg.build("atfm", preset="smoke", transport={"coupling": "matchd"})
    torch.manual_seed(0)
    matched = ambiseg.build("atfm", preset="smoke", transport={"coupling": "matched"})
    losses = _fit(matched, "transport", batch, 30, 1e-2)
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])


def test_guided_flow_reads_the_gtr_mean_and_refuses_a_prior_without_one():
    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="smoke", transport={"guide": True})
    assert method.transport.net.stem.in_channels == 3  # image, GTR mean probability, state
    images = torch.rand(2, 1, 16, 16)
    state = method.prior.condition(images)
    cond = method.transport.with_prior(method.transport.condition(images), method.prior, state)
    mean = state.mean.reshape(2, 1, 16, 16).sigmoid()
    assert torch.equal(cond[:, 1:], mean) and torch.equal(cond[:, :1], images)
    losses = _fit(method, "transport", _disks(), 20, 1e-2)
    assert sum(losses[-5:]) < sum(losses[:5])
    out = method.sample(images, 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ambiseg.CompatibilityError, match="option 'guide'.*has none"):
        ambiseg.build("sfm-noise", preset="smoke", transport={"guide": True})
