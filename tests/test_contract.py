"""Contract tests parametrised over the registries (the timm pattern), so a component registered
by a plug-in is tested without writing a test.

Every registered method (smoke preset, 16 px): samples are probabilities and seeded, every
stage's loss is finite and reaches the stage's parameters, a checkpoint rebuilds the same method,
and the cVAE/diffusion baselines learn a few toy images. Every registered prior, transport,
sampler, path and noise schedule: its config round-trips through JSON, and it keeps the promises
of its interface (below). A component's tiny config is the one the smoke preset of the first
recipe using it gives; a component no recipe uses is built with its defaults.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from smoke_methods import woken_smoke_build

import ambiseg
from ambiseg import data
from ambiseg.categorical import CategoricalProcess
from ambiseg.checkpoint import load_method, save_checkpoint
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.interfaces import STATE_KINDS, TRANSPORT_KINDS, Prior, Sampler, Transport
from ambiseg.noise_schedules import DiffusionSchedule
from ambiseg.paths import ProbPath
from ambiseg.recipes import method_config
from ambiseg.registry import REGISTRIES, methods, noise_schedules, paths, priors, samplers, transports
from ambiseg.runtime import collate
from ambiseg.train import Trainer

NAMES = methods.names()
DETERMINISTIC = {"det-unet"}


build = woken_smoke_build  # the smoke preset with zero-initialised output layers woken up, so samples vary


def toy_batch(n: int = 3, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


@pytest.mark.parametrize(
    ("name", "sampler"), [(name, None) for name in NAMES] + [("cimd", "ddpm"), ("cimd", {"name": "ddim", "eta": 0.5})]
)
def test_one_generator_per_image_gives_each_image_its_own_samples(name, sampler):
    """Batched across images with one generator each = each image sampled alone with its generator
    (to float rounding: the sampler sees other batch compositions), whatever the chunking."""
    method = build(name, sampler=sampler)
    images = toy_batch(3)["image"]
    alone = [method.sample(images[i : i + 1], 5, generator=torch.Generator().manual_seed(10 + i)) for i in range(3)]
    for max_batch in (2, 64):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        together = method.sample(images, 5, generator=gens, max_batch=max_batch)
        alone_mb = [
            method.sample(images[i : i + 1], 5, generator=torch.Generator().manual_seed(10 + i), max_batch=max_batch)
            for i in range(3)
        ]
        torch.testing.assert_close(together, torch.cat(alone_mb), rtol=0, atol=1e-5)
        if max_batch == 64:
            torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="2 generators for 3 images"):
        method.sample(images, 5, generator=gens[:2])


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_seeded_probabilities(name):
    method = build(name)
    images = toy_batch(2)["image"]
    a, b, c = (method.sample(images, 3, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert a.shape == (2, 3, 16, 16) and a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert name in DETERMINISTIC or not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_has_a_finite_loss_that_reaches_its_parameters(name):
    method = build(name)
    for stage in method.stages:
        params = method.begin_stage(stage)
        torch.manual_seed(1)
        terms = method.loss(toy_batch(), stage)
        assert all(torch.isfinite(v).all() for v in terms.values()), terms
        method.zero_grad(set_to_none=True)
        terms["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), stage
        frozen = [p for p in method.parameters() if all(p is not q for q in params)]
        assert all(p.grad is None for p in frozen), stage


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_rebuilds_the_same_method(name, tmp_path):
    method = build(name)
    save_checkpoint(tmp_path / "m.safetensors", method, method.config, stage_index=len(method.stages))
    rebuilt, _ = load_method(tmp_path / "m.safetensors")
    assert rebuilt.config == method.config
    images = toy_batch(1)["image"]
    same = [m.sample(images, 2, generator=torch.Generator().manual_seed(3)) for m in (method, rebuilt)]
    assert torch.equal(*same)


# (stage, optimiser steps, learning rate, window): mean loss of the last `window` steps must be
# below 0.7 x that of the first `window` steps when over-fitting four toy images.
LEARNS = {"probunet": ("joint", 30, 1e-2, 5), "phiseg": ("joint", 25, 1e-2, 5), "cimd": ("transport", 40, 3e-3, 8)}


@pytest.mark.parametrize("name", sorted(LEARNS))
def test_loss_decreases_on_toy_images(name):
    stage, steps, lr, window = LEARNS[name]
    torch.manual_seed(0)
    method = ambiseg.build(name, preset="smoke", train={stage: {"steps": steps, "batch_size": 4, "lr": lr}})
    history = (
        Trainer(method, data.build("synthetic", size=16, num_annotators=2, sizes=(4, 1, 1)), progress=False, seed=0)
        .fit()
        .history
    )
    losses = [h["loss"] for h in history]
    assert len(losses) == steps
    assert sum(losses[-window:]) / window < 0.7 * sum(losses[:window]) / window


# ---- components --------------------------------------------------------------------------------


def _smoke_specs() -> dict[str, dict[str, dict[str, Any]]]:
    """{role registry: {component name: options}} from the smoke presets of the registered recipes."""
    out: dict[str, dict[str, dict[str, Any]]] = {"priors": {}, "transports": {}, "samplers": {}}
    for name in NAMES:
        recipe = methods.get(name).info.get("recipe")
        if recipe is None or "smoke" not in recipe.presets:
            continue
        config = method_config(name, preset="smoke")
        for kind in out:
            spec = dict(config[kind[:-1]])
            out[kind].setdefault(REGISTRIES[kind].canonical(spec.pop("name")), spec)
    return out


SMOKE = _smoke_specs()


def make(kind: str, name: str, **options: Any) -> tuple[Any, dict[str, Any]]:
    """Component `name` of registry `kind` at its tiny config (1-channel images), and the options used."""
    entry = REGISTRIES[kind].get(name)
    options = {**SMOKE.get(kind, {}).get(entry.name, {}), **options}
    if "in_channels" in {f.name for f in dataclasses.fields(entry.config)}:
        options["in_channels"] = 1
    return entry.create(**options), options


def _round_trips(kind: str, name: str, options: dict[str, Any]) -> None:
    """The full config is JSON, and its JSON form rebuilds the same config (as a checkpoint's does)."""
    entry = REGISTRIES[kind].get(name)

    def as_json(config: Any) -> Any:
        return json.loads(json.dumps(dataclasses.asdict(config)))

    saved = as_json(entry.make_config(**options))
    assert as_json(entry.make_config(**saved)) == saved


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", priors.names())
def test_prior_draws_seeded_finite_states(name):
    torch.manual_seed(0)
    prior, options = make("priors", name)
    _round_trips("priors", name, options)
    assert isinstance(prior, Prior)
    images = toy_batch(2)["image"]
    with torch.no_grad():
        state = prior.eval().condition(images)
        a, b = (prior.sample(state, 3, generator=_seeded(1)) for _ in range(2))
    assert a.shape[:2] == (2, 3) and torch.isfinite(a).all() and torch.equal(a, b)
    assert prior.draws in STATE_KINDS  # what it draws is declared, so compose can check it
    if prior.draws == "mask":
        assert a.min() >= 0 and a.max() <= 1
    if prior.draws == "none":
        assert torch.equal(a[:, 0], a[:, 1])
    if prior.trainable_alone:  # a prior with a stage of its own trains on a batch alone
        prior.train()
        terms = prior.loss(toy_batch())
        assert all(torch.isfinite(v).all() for v in terms.values()), terms
        terms["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.parameters())


@pytest.mark.parametrize("name", transports.names())
def test_transport_hands_its_samplers_what_they_follow(name):
    """Its kind is one a registered sampler integrates, and every such sampler runs from its
    `initial_state` with its `sampler_options()` (a zero field stands in for the network)."""
    torch.manual_seed(0)
    transport, options = make("transports", name)
    _round_trips("transports", name, options)
    assert isinstance(transport, Transport) and transport.kind in TRANSPORT_KINDS
    assert transport.accepts and transport.accepts <= set(STATE_KINDS)
    fits = [n for n in samplers.names() if transport.kind in samplers.get(n).factory.integrates]
    assert fits, f"no registered sampler integrates {transport.kind} transports"
    x0 = torch.rand(2, 1, 4, 4)
    start = transport.initial_state(x0, generator=_seeded(0))
    # one state per draw, of the draw's size; its channels may grow (Flow-SSN carries its start along)
    assert start.shape[0] == 2 and start.shape[-2:] == x0.shape[-2:] and torch.isfinite(start).all()
    for sampler_name in fits:
        sampler, _ = make("samplers", sampler_name)
        out = sampler(
            lambda x, t, c: torch.zeros_like(x), start, None, generator=_seeded(1), **transport.sampler_options()
        )
        assert out.shape == start.shape and torch.isfinite(out).all(), sampler_name


@pytest.mark.parametrize("name", samplers.names())
def test_sampler_solves_a_known_problem_of_each_kind_it_integrates(name):
    """flow: dx/dt = 1 over the span it is handed; diffusion: an oracle eps returns x0 exactly;
    categorical: an oracle x0 returns x0 exactly; map: one call. Same generator, same result; an
    option it does not read is refused."""
    sampler, options = make("samplers", name)
    _round_trips("samplers", name, options)
    assert isinstance(sampler, Sampler) and sampler.integrates and sampler.integrates <= set(TRANSPORT_KINDS)
    assert sampler.nfe is None or sampler.nfe >= 1
    runs = []
    if "flow" in sampler.integrates:
        x = torch.zeros(2, 3, dtype=torch.float64)
        out = sampler(lambda x, t, c: torch.ones_like(x), x, None, generator=_seeded(0), t0=0.25, t1=1.0)
        torch.testing.assert_close(out, x + 0.75, atol=1e-6, rtol=0)
        runs.append(lambda g: sampler(lambda x, t, c: -x, torch.ones(2, 3), None, generator=g, t0=0.0, t1=1.0))
    if "diffusion" in sampler.integrates:
        schedule = noise_schedules.create("linear", steps=30)
        x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=_seeded(2)) * 2 - 1
        noise = torch.randn(x0.shape, dtype=torch.float64, generator=_seeded(3))

        def oracle(x, t, c):
            return schedule.predict_eps(x, t, x0)

        out = sampler(oracle, noise, None, generator=_seeded(0), schedule=schedule, start=30)
        torch.testing.assert_close(out, x0, atol=1e-8, rtol=0)
        runs.append(lambda g: sampler(lambda x, t, c: 0.5 * x, noise, None, generator=g, schedule=schedule, start=30))
    if "categorical" in sampler.integrates:
        process = CategoricalProcess(noise_schedules.create("cosine", steps=30), classes=2)
        mask = (torch.rand(2, 1, 4, 4, generator=_seeded(2)) < 0.5).float()
        xt = (torch.rand(2, 1, 4, 4, generator=_seeded(3)) < 0.5).float()
        out = sampler(lambda x, t, c: mask, xt, None, generator=_seeded(0), process=process, start=30)
        assert torch.equal(out, mask)
        runs.append(
            lambda g: sampler(lambda x, t, c: torch.full_like(x, 0.5), xt, None, generator=g, process=process, start=30)
        )
    if "map" in sampler.integrates:
        calls = []
        out = sampler(lambda x, t, c: calls.append(t) or x + 1, torch.zeros(3), None)
        assert torch.equal(out, torch.ones(3)) and calls == [None]
        runs.append(lambda g: sampler(lambda x, t, c: x * 2, torch.ones(3), None, generator=g))
    for run in runs:
        assert torch.equal(run(_seeded(5)), run(_seeded(5)))
    with pytest.raises(CompatibilityError, match="not_an_option"):
        sampler(lambda x, t, c: x, torch.zeros(2, 3), None, not_an_option=1)


@pytest.mark.parametrize("name", paths.names())
def test_path_runs_from_source_to_mask_with_the_velocity_of_its_states(name):
    """x_0 = source and x_1 = mask; u_t = d x_t / d t (central difference); `estimate_x1` inverts
    (x_t, u_t) to the mask; with a truncation t0 the span is (t0, 1) and `start` is x_{t0}."""
    path, options = make("paths", name)
    _round_trips("paths", name, options)
    assert isinstance(path, ProbPath) and path.span == (0.0, 1.0) and not path.truncated
    g = _seeded(0)
    x0, x1 = torch.randn(5, 1, 3, 3, dtype=torch.float64, generator=g), torch.rand(5, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
    ends = [path.sample(x0, x1, torch.full((5,), end, dtype=torch.float64)).x_t for end in (0.0, 1.0)]
    torch.testing.assert_close(ends[0], x0, atol=1e-9, rtol=0)
    torch.testing.assert_close(ends[1], x1, atol=1e-9, rtol=0)
    point, h = path.sample(x0, x1, t), 1e-6
    slope = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    torch.testing.assert_close(point.u_t, slope, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(path.estimate_x1(point.x_t, point.u_t, t), x1, atol=1e-9, rtol=1e-9)
    truncated, _ = make("paths", name, truncation=0.4)
    assert truncated.truncated and truncated.span == (0.4, 1.0)
    times = truncated.times(torch.tensor([0.0, 0.5]))
    assert torch.allclose(times, torch.tensor([0.4, 0.7]))
    expected = truncated.sample(x0, x1, torch.full((5,), 0.4, dtype=torch.float64)).x_t
    torch.testing.assert_close(truncated.start(x1, x0), expected)


@pytest.mark.parametrize("name", noise_schedules.names())
def test_noise_schedule_ends_in_noise_and_drives_a_diffusion_transport(name):
    schedule, options = make("noise_schedules", name, steps=50)
    _round_trips("noise_schedules", name, options)
    assert isinstance(schedule, DiffusionSchedule) and schedule.steps == 50 and schedule.betas.shape == (51,)
    assert schedule.betas[0] == 0 and ((schedule.betas[1:] > 0) & (schedule.betas[1:] < 1)).all()
    assert schedule.alpha_bar[0] == 1 and (schedule.alpha_bar.diff() < 0).all()
    assert schedule.alpha_bar[-1] < 0.01, "an untruncated chain must end (nearly) in pure noise"
    x0 = torch.rand(2, 1, 3, 3, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, dtype=torch.float64)
    for k in (1, 25, 50):
        torch.testing.assert_close(schedule.predict_x0(schedule.q_sample(x0, k, noise), k, noise), x0)
    cimd = {"name": "cimd", **SMOKE["transports"]["cimd"], "schedule": name}
    method = ambiseg.compose(prior="noise", transport=cimd, sampler={"name": "ddim", "steps": 3})
    out = method.sample(toy_batch(1)["image"], 2, generator=_seeded(0))
    assert out.shape == (1, 2, 16, 16) and out.min() >= 0 and out.max() <= 1


PLUGIN = """
import torch

from ambiseg import Prior
from ambiseg.noise_schedules import DiffusionSchedule
from ambiseg.paths import AffinePath
from ambiseg.registry import noise_schedules, paths, priors


@paths.register("demo-quadratic")
class Quadratic(AffinePath):
    def coefficients(self, t):
        return t * t, 1 - t * t, 2 * t, -2 * t


@paths.register("demo-wrong-velocity")
class WrongVelocity(AffinePath):
    def coefficients(self, t):
        return t, 1 - t, 1.0, 1.0  # d sigma / dt is -1: the contract must catch this


@noise_schedules.register("demo-constant")
class Constant(DiffusionSchedule):
    def __init__(self, steps: int = 100, *, beta: float = 0.1) -> None:
        super().__init__(torch.full((steps,), beta))


@priors.register("demo-uniform")
class Uniform(Prior):
    def sample(self, state, num_samples, *, generator=None):
        b, _, h, w = state.shape
        return torch.rand(b, num_samples, 1, h, w, generator=generator)
"""


@pytest.mark.slow
def test_a_plugin_installed_through_the_entry_point_gets_these_tests(tmp_path, write_plugin):
    """An installed distribution registering a path, a noise schedule and a prior: collecting this
    file picks them up, the sound ones pass and the path with a wrong velocity fails."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    write_plugin(tmp_path, "ambiseg_demo_components", PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", __file__, "-k", "demo", "-rf"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "1 failed, 3 passed" in result.stdout, result.stdout[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "[demo-wrong-velocity]" in failed[0]
