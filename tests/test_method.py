"""Method composition: compatibility, stages and freezing, configs, chunked sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ambiseg
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.recipes import Recipe, register_recipe
from ambiseg.registry import methods, priors, transports


class ToyPrior(ambiseg.Prior):
    """Gaussian around a learned constant; counts `condition` calls."""

    trainable_alone = True
    default_training = {"optimizer": "adamw", "lr": 1e-3}

    def __init__(self, in_channels: int = 1, scale: float = 1.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.mu = nn.Parameter(torch.zeros(1))
        self.scale = scale
        self.calls = 0

    def condition(self, images):
        self.calls += 1
        return images.mean(1, keepdim=True) + self.mu

    def sample(self, state, num_samples, *, generator=None):
        eps = torch.randn(state.shape[0], num_samples, *state.shape[1:], generator=generator)
        return state.unsqueeze(1) + self.scale * eps

    def loss(self, batch):
        return {"loss": (self.mu - batch["masks"].float().mean()) ** 2}


class ToyFlow(ambiseg.Transport):
    """v = w * (image - x): flows each state towards the image; records batch sizes."""

    kind = "flow"
    accepts = frozenset({"noise"})

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.sizes: list[int] = []

    def forward(self, x, t, cond):
        self.sizes.append(x.shape[0])
        return self.w * (cond.mean(1, keepdim=True) - x)

    def loss(self, batch, prior):
        with torch.no_grad():
            x0 = prior.sample(prior.condition(batch["image"]), 1).squeeze(1)
        return {"loss": ((self(x0, None, batch["image"]) - 1.0) ** 2).mean()}


class ToyDiffusion(ToyFlow):
    kind = "diffusion"


@pytest.fixture()
def toy_registered():
    priors.register("toy-prior")(ToyPrior)
    transports.register("toy-flow")(ToyFlow)
    register_recipe(
        Recipe(
            name="toy",
            prior={"name": "toy-prior"},
            transport={"name": "toy-flow"},
            sampler={"name": "euler", "steps": 4},
            aliases=("toy-alias",),
            presets={"fast": {"sampler": {"steps": 2}, "train": {"prior": {"lr": 0.5}}}},
        )
    )
    yield
    priors._entries.pop("toy-prior")
    transports._entries.pop("toy-flow")
    methods._entries.pop("toy")
    methods._aliases.pop("toy-alias")


def batch(b=2, a=3, size=8):
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(b, 1, size, size, generator=g),
        "masks": (torch.rand(b, a, size, size, generator=g) > 0.5).to(torch.uint8),
    }


def test_incompatible_sampler_is_one_clear_line():
    with pytest.raises(CompatibilityError) as info:
        ambiseg.compose(prior=ToyPrior(), transport=ToyDiffusion(), sampler="euler")
    msg = str(info.value)
    assert "\n" not in msg and "integrates flow" in msg and "is a diffusion" in msg
    with pytest.raises(CompatibilityError, match="integrates map transports.*is a flow.*use one of: .*euler"):
        ambiseg.compose(prior=ToyPrior(), transport=ToyFlow(), sampler="direct")


def test_stages_are_inferred_and_freeze_the_rest():
    method = ambiseg.compose(prior=ToyPrior(), transport=ToyFlow(), sampler="euler")
    assert method.stages == ("prior", "transport")
    params = method.begin_stage("transport")
    assert params == list(method.transport.parameters())
    assert not method.prior.mu.requires_grad and not method.prior.training
    before = method.prior.mu.detach().clone()
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        method.loss(batch(), "transport")["loss"].backward()
        opt.step()
    assert torch.equal(method.prior.mu, before)
    assert method.transport.w.item() != 1.0
    with pytest.raises(ConfigError, match="has no stage 'joint'"):
        method.loss(batch(), "joint")


def test_training_defaults_come_from_the_stage_module():
    method = ambiseg.compose(prior=ToyPrior(), transport=ToyFlow(), sampler="euler")
    assert method.train_config["prior"]["optimizer"] == "adamw" and method.train_config["prior"]["lr"] == 1e-3
    assert method.train_config["transport"]["optimizer"] == "adam"


def test_sample_runs_image_work_once_and_bounds_the_batch():
    prior, flow = ToyPrior(), ToyFlow()
    method = ambiseg.compose(prior=prior, transport=flow, sampler={"name": "euler", "steps": 2})
    images = torch.rand(3, 1, 8, 8)
    out = method.sample(images, 10, max_batch=12, generator=torch.Generator().manual_seed(1))
    assert out.shape == (3, 10, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert prior.calls == 1  # one group of 3 images, 10 samples in chunks of 4
    assert max(flow.sizes) <= 12 and sum(flow.sizes) == 3 * 10 * 2
    again = method.sample(images, 10, max_batch=12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = method.sample(images, 10, max_batch=12, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)


def test_more_images_than_max_batch_are_grouped():
    prior = ToyPrior()
    method = ambiseg.compose(prior=prior, transport=ToyFlow(), sampler="euler", max_batch=2)
    out = method.sample(torch.rand(5, 1, 4, 4), 3)
    assert out.shape == (5, 3, 4, 4) and prior.calls == 3


def test_sample_validates_inputs():
    method = ambiseg.compose(prior=ToyPrior(), transport=ToyFlow(), sampler="euler")
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\].*\(8, 8\)"):
        method.sample(torch.rand(8, 8), 2)
    with pytest.raises(ConfigError, match="num_samples.*positive"):
        method.sample(torch.rand(1, 1, 8, 8), 0)


def test_build_presets_overrides_and_config_round_trip(toy_registered):
    method = ambiseg.build("toy-alias", preset="fast", prior={"scale": "0.5"})
    assert method.name == "toy" and method.sampler.steps == 2 and method.prior.scale == 0.5
    assert method.train_config["prior"]["lr"] == 0.5
    again = ambiseg.Method.from_config(method.config)
    assert again.config == method.config
    heun = ambiseg.build("toy", sampler={"name": "heun", "steps": 3})
    assert type(heun.sampler).__name__ == "Heun" and heun.sampler.steps == 3
    with pytest.raises(ConfigError, match="no preset 'fats'.*did you mean 'fast'"):
        ambiseg.build("toy", preset="fats")
    with pytest.raises(ConfigError, match="no option 'scal'.*did you mean 'scale'"):
        ambiseg.build("toy", prior={"scal": 1})
    with pytest.raises(CompatibilityError):
        ambiseg.build("toy", sampler="direct")


def test_apply_overrides_dotted_keys(toy_registered):
    from ambiseg.config import apply_overrides

    cfg = ambiseg.build("toy").config
    cfg = apply_overrides(cfg, {"prior.scale": "2", "sampler": "rk4", "train.transport.epochs": 3})
    method = ambiseg.Method.from_config(cfg)
    assert method.prior.scale == 2.0 and type(method.sampler).__name__ == "RK4"
    assert method.train_config["transport"]["epochs"] == 3
    with pytest.raises(ConfigError, match="unknown config key 'prio.scale'.*did you mean 'prior'"):
        apply_overrides(cfg, {"prio.scale": 1})
    with pytest.raises(ConfigError, match="max_batch: expected a positive integer"):
        apply_overrides(cfg, {"max_batch": "0"})


def test_compose_by_names_injects_data_keys(toy_registered):
    method = ambiseg.compose(
        prior="toy-prior", transport="toy-flow", sampler={"name": "midpoint", "steps": 2}, in_channels=3
    )
    assert method.prior.in_channels == 3 and method.config["prior"]["in_channels"] == 3
    out = method.sample(torch.rand(2, 3, 8, 8), 2)
    assert out.shape == (2, 2, 8, 8)


class UniformNoise(ambiseg.Prior):
    """A noise prior that is not `NoisePrior`: uniform noise scaled to unit variance."""

    draws = "noise"

    def condition(self, images):
        return images

    def sample(self, state, num_samples, *, generator=None):
        b, _, h, w = state.shape
        u = torch.rand(b, num_samples, 1, h, w, generator=generator)
        return (u - 0.5) * 12**0.5


def test_declared_state_kinds_decide_what_composes():
    """A plug-in noise prior feeds a diffusion transport (its declaration, not its class, counts);
    a state kind the transport does not carry is one line naming both sides."""
    method = ambiseg.compose(
        prior=UniformNoise(),
        transport={
            "name": "cimd",
            "steps": 100,
            "width": 8,
            "mults": [1, 2],
            "blocks": 1,
            "groups": 4,
            "attention": False,
            "encoder_widths": [8, 16],
            "encoder_convs": 1,
        },
        sampler={"name": "ddim", "steps": 2},
    )
    out = method.sample(torch.rand(2, 1, 16, 16), 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(CompatibilityError, match="IdentityTransport carries mask states.*UniformNoise draws noise"):
        ambiseg.compose(prior=UniformNoise(), transport="identity", sampler="direct")
    with pytest.raises(CompatibilityError, match="untruncated diffusion starts from noise"):
        ambiseg.compose(
            prior={"name": "gtr", "widths": [8, 16], "features": 8, "rank": 2}, transport="cimd", sampler="ddim"
        )

    class Undeclared(UniformNoise):
        draws = "heatmap"

    with pytest.raises(
        CompatibilityError, match="declares draws='heatmap'; declare one of: noise, mask, latent, logits, none"
    ):
        ambiseg.compose(prior=Undeclared(), transport="sfm", sampler="euler")


def test_a_transport_must_declare_the_states_it_carries_and_a_mismatch_is_refused_at_build(toy_registered):
    """A plug-in flow paired with a latent prior used to build and fail at sampling with torch's expand error."""
    latent = {"name": "probunet-latent", "latent_dim": 2, "widths": [8, 16], "convs": 1}
    with pytest.raises(CompatibilityError, match="ToyFlow carries noise states, but prior ProbUNetLatent draws latent"):
        ambiseg.build("toy", prior=latent)

    class Silent(ToyFlow):
        accepts = frozenset()

    with pytest.raises(CompatibilityError, match=r"Silent declares no prior state it carries; set `accepts"):
        ambiseg.compose(prior=ToyPrior(), transport=Silent(), sampler="euler")
    with pytest.raises(CompatibilityError, match="UNetMap carries none states, but prior GTRPrior draws mask"):
        ambiseg.build("det-unet", prior={"name": "gtr", "widths": [8, 16], "features": 8, "rank": 2})


@pytest.mark.parametrize("name", ["build", "compose", "Recipe", "register_recipe", "method_config", "list_components"])
def test_names_that_moved_to_recipes_still_import_from_method_with_a_warning(name):
    import ambiseg.method
    import ambiseg.recipes

    with pytest.warns(DeprecationWarning, match=f"ambiseg.recipes.{name}"):
        value = getattr(ambiseg.method, name)
    assert value is getattr(ambiseg.recipes, name)
    with pytest.raises(AttributeError):
        ambiseg.method.no_such_name  # noqa: B018 - the attribute access is the test
