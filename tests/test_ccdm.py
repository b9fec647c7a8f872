"""Categorical diffusion (ambiseg/categorical.py) and its transport and recipes (ambiseg/methods/ccdm.py).

Expected values are computed here independently of the code under test: from literal numbers worked
out by hand, from the transition matrices of the process (D3PM's matrix form) and from BerDiff's
Bernoulli formulas as its paper writes them.
"""

from __future__ import annotations

import math

import pytest
import torch
from smoke_methods import woken_smoke_build

import ambiseg
from ambiseg import data
from ambiseg.categorical import CategoricalAncestral, CategoricalDDIM, CategoricalProcess
from ambiseg.errors import CompatibilityError, ConfigError
from ambiseg.methods.ccdm import CategoricalDiffusion
from ambiseg.noise_schedules import DiffusionSchedule
from ambiseg.runtime import collate
from ambiseg.train import Trainer

# betas 0.1, 0.2, 0.5: alpha_bar = 1, 0.9, 0.72, 0.36 at k = 0..3
BETAS = torch.tensor([0.1, 0.2, 0.5], dtype=torch.float64)
ABAR = [1.0, 0.9, 0.72, 0.36]


def process(classes: int, reverse: str = "mixture") -> CategoricalProcess:
    return CategoricalProcess(DiffusionSchedule(BETAS), classes, reverse=reverse)


def column(*values: float) -> torch.Tensor:
    """One pixel's state [1, C, 1, 1] (float64)."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)


def transition_matrix(keep: float, classes: int) -> torch.Tensor:
    """Q[i, j] = q(x_k = j | x_prev = i) = keep [i = j] + (1 - keep) / K."""
    return keep * torch.eye(classes, dtype=torch.float64) + (1 - keep) / classes


def matrix_posterior(xk: int, x0: torch.Tensor, k: int, prev: int, classes: int) -> torch.Tensor:
    """q(x_prev | x_k = xk, x_0) by Bayes' rule on the matrices: Q_{k|prev}[:, xk] * (x0^T Qbar_prev)."""
    step = transition_matrix(ABAR[k] / ABAR[prev], classes)[:, xk]
    marginal = x0 @ transition_matrix(ABAR[prev], classes)
    out = step * marginal
    return out / out.sum()


def toy_batch(n: int = 3, size: int = 16) -> dict[str, torch.Tensor]:
    return collate([data.build("synthetic", size=size, num_annotators=2, sizes=(n, 1, 1))[i] for i in range(n)])


# ---- forward process and posterior ---------------------------------------------------------------
def test_two_class_marginal_and_transition_by_hand():
    p = process(2)
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    # q(x_2 = 1 | x_0): 0.72 x_0 + 0.28 / 2
    torch.testing.assert_close(p.marginal(x0, 2), torch.tensor([0.86, 0.14], dtype=torch.float64).view(1, 1, 1, 2))
    # q(x_2 = 1 | x_1): (1 - 0.2) x_1 + 0.2 / 2
    torch.testing.assert_close(p.transition(x0, 2), torch.tensor([0.9, 0.1], dtype=torch.float64).view(1, 1, 1, 2))
    # from k = 1 straight to k = 3: keep 0.36 / 0.9 = 0.4
    torch.testing.assert_close(
        p.transition(x0, 3, prev=1), torch.tensor([0.7, 0.3], dtype=torch.float64).view(1, 1, 1, 2)
    )


def test_three_class_marginal_by_hand():
    p = process(3)
    # class 2 at step 3: 0.36 [0, 0, 1] + 0.64 / 3
    expected = column(0.64 / 3, 0.64 / 3, 0.36 + 0.64 / 3)
    torch.testing.assert_close(p.marginal(column(0, 0, 1), 3), expected)
    assert math.isclose(float(expected.sum()), 1.0)


def test_two_class_posterior_by_hand():
    """q(x_1 = 1 | x_2, x_0) for the four binary cases: left (0.1, 0.9) or (0.9, 0.1) from x_2,
    right (0.05, 0.95) or (0.95, 0.05) from x_0, product normalised."""
    p = process(2)
    cases = {(1, 1): 0.855 / 0.86, (1, 0): 0.045 / 0.14, (0, 1): 0.095 / 0.14, (0, 0): 0.005 / 0.86}
    for (xk, x0), fg in cases.items():
        got = p.posterior(column(xk), column(x0), 2)
        torch.testing.assert_close(got, column(fg))


def test_three_class_posterior_by_hand_and_by_matrices():
    p = process(3)
    # x_2 = class 0, x_0 = class 1: left (13, 1, 1) / 15, right (1, 28, 1) / 30 -> (13, 28, 1) / 42
    torch.testing.assert_close(p.posterior(column(1, 0, 0), column(0, 1, 0), 2), column(13 / 42, 28 / 42, 1 / 42))
    for xk in range(3):
        for c in range(3):
            x0 = torch.eye(3, dtype=torch.float64)[c]
            for k, prev in ((2, 1), (3, 2), (3, 1), (1, 0)):
                got = p.posterior(torch.eye(3, dtype=torch.float64)[xk].view(1, 3, 1, 1), x0.view(1, 3, 1, 1), k, prev)
                torch.testing.assert_close(got.flatten(), matrix_posterior(xk, x0, k, prev, 3))


def test_reverse_step_mixture_and_plugin_for_three_classes():
    """mixture = sum_c x0_hat_c q(x_1 | x_2, e_c) (CCDM); plugin = q(x_1 | x_2, x_0 = x0_hat) (BerDiff)."""
    x0_hat = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    xk = column(1, 0, 0)
    eye = torch.eye(3, dtype=torch.float64)
    mixture = sum(x0_hat[c] * matrix_posterior(0, eye[c], 2, 1, 3) for c in range(3))
    torch.testing.assert_close(process(3).reverse_probs(xk, x0_hat.view(1, 3, 1, 1), 2).flatten(), mixture)
    torch.testing.assert_close(
        process(3, "plugin").reverse_probs(xk, x0_hat.view(1, 3, 1, 1), 2).flatten(),
        matrix_posterior(0, x0_hat, 2, 1, 3),
    )
    # c = 0 by hand: left (13, 1, 1) / 15, right (28, 1, 1) / 30 -> (364, 1, 1) / 366
    torch.testing.assert_close(
        matrix_posterior(0, eye[0], 2, 1, 3), torch.tensor([364, 1, 1], dtype=torch.float64) / 366
    )
    for reverse in ("mixture", "plugin"):  # the last step is x0_hat itself
        torch.testing.assert_close(process(3, reverse).reverse_probs(xk, x0_hat.view(1, 3, 1, 1), 1).flatten(), x0_hat)


def test_two_classes_are_berdiffs_bernoulli_formulas():
    """BerDiff (Chen et al., 2023): q(x_t | x_0) = B(abar_t x_0 + (1 - abar_t) / 2), q(x_{t-1} | x_t, x_0) =
    B(theta_2 / (theta_1 + theta_2)) with theta_2 = (alpha_t x_t + (1 - alpha_t) / 2)(abar_{t-1} x_0 +
    (1 - abar_{t-1}) / 2) and theta_1 the same at 1 - x_t, 1 - x_0; p puts x0_hat into it; BDDIM:
    B(sigma x_t + (abar_{t-1} - sigma abar_t) x0_hat), sigma = (1 - abar_{t-1}) / (1 - abar_t)."""
    g = torch.Generator().manual_seed(0)
    xt = (torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) < 0.5).double()
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64)  # soft: covers the plug-in reverse
    p = process(2, "plugin")
    for t in (1, 2, 3):
        a, ab, ab_prev = 1 - float(BETAS[t - 1]), ABAR[t], ABAR[t - 1]
        torch.testing.assert_close(p.marginal(x0, t), ab * x0 + (1 - ab) / 2)
        theta_2 = (a * xt + (1 - a) / 2) * (ab_prev * x0 + (1 - ab_prev) / 2)
        theta_1 = (a * (1 - xt) + (1 - a) / 2) * (ab_prev * (1 - x0) + (1 - ab_prev) / 2)
        torch.testing.assert_close(p.posterior(xt, x0, t), theta_2 / (theta_1 + theta_2))
        expected = x0 if t == 1 else theta_2 / (theta_1 + theta_2)  # BerDiff's p_mean returns x0_hat at t = 0
        torch.testing.assert_close(p.reverse_probs(xt, x0, t), expected)
        if t > 1:
            sigma = (1 - ab_prev) / (1 - ab)
            ddim = CategoricalDDIM().probs(p, xt, x0, t, t - 1)
            torch.testing.assert_close(ddim, sigma * xt + (ab_prev - sigma * ab) * x0)
    # the two-class state is the foreground channel of the one-hot K = 2 process
    torch.testing.assert_close(p.full(xt), torch.cat([1 - xt, xt], dim=1))


def test_kl_term_by_hand():
    """k = 2, x_2 = 1, x_0 = 1, x0_hat = 0.7: q = (0.005814, 0.994186); the mixture reverse is
    0.7 q(. | x_0 = 1) + 0.3 q(. | x_0 = 0) with q(x_1 = 1 | x_2 = 1, x_0 = 0) = 0.045 / 0.14."""
    q_fg = 0.855 / 0.86
    p_fg = 0.7 * q_fg + 0.3 * (0.045 / 0.14)
    expected = (1 - q_fg) * math.log((1 - q_fg) / (1 - p_fg)) + q_fg * math.log(q_fg / p_fg)
    got = process(2).kl(column(1), column(1), column(0.7), 2)
    assert got.shape == (1, 1, 1) and math.isclose(float(got), expected, rel_tol=1e-9)
    # at k = 1 the posterior is x_0: the term is the cross-entropy -log x0_hat(x_0)
    assert math.isclose(float(process(2).kl(column(1), column(0), column(0.7), 1)), -math.log(0.7), rel_tol=1e-9)
    assert math.isclose(float(process(2).kl(column(0), column(1), column(0.7), 1)), -math.log(0.3), rel_tol=1e-9)


def test_transport_loss_by_hand_on_a_one_step_chain():
    """T = 1: every step is k = 1, where the KL term is the x_0 cross-entropy; with a constant logit l
    and identical annotators, loss = (1 + ce_weight) mean(-log sigmoid(+-l))."""
    transport = CategoricalDiffusion(steps=1, width=8, mults=(1, 2), blocks=1, attention=False, ce_weight=0.5)
    torch.nn.init.constant_(transport.denoiser.head.bias, 0.8)  # the zero head now outputs l = 0.8 everywhere
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    batch = {"image": torch.rand(2, 1, 8, 8), "masks": mask.expand(2, 3, 8, 8)}
    terms = transport.loss(batch, prior=None)
    ce = torch.where(
        mask > 0,
        -torch.nn.functional.logsigmoid(torch.tensor(0.8)),
        -torch.nn.functional.logsigmoid(torch.tensor(-0.8)),
    )
    torch.testing.assert_close(terms["kl"], ce.mean())
    torch.testing.assert_close(terms["ce"], ce.mean())
    torch.testing.assert_close(terms["loss"], 1.5 * ce.mean())


def test_flip_prediction_is_berdiffs_eps_parameterisation():
    """x0_hat = |x_k - eps_hat| with eps_hat = sigmoid(output)."""
    transport = CategoricalDiffusion(steps=10, width=8, mults=(1, 2), blocks=1, attention=False, prediction="flip")
    torch.nn.init.normal_(transport.denoiser.head.weight, std=0.5)
    x = (torch.rand(3, 1, 8, 8) < 0.5).float()
    k, image = torch.tensor([1, 5, 10]), torch.rand(3, 1, 8, 8)
    eps_hat = torch.sigmoid(transport.logits(x, k, image))
    torch.testing.assert_close(transport(x, k, image), (x - eps_hat).abs())
    with pytest.raises(ConfigError, match="needs classes=2"):
        CategoricalDiffusion(classes=3, prediction="flip")


# ---- samplers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("sampler", [CategoricalAncestral(), CategoricalAncestral(2), CategoricalDDIM(2)])
def test_an_oracle_x0_is_recovered_exactly(classes, sampler):
    p = process(classes)
    labels = torch.randint(classes, (4, 1, 5, 5), generator=torch.Generator().manual_seed(0))
    x0 = p.one_hot(labels).double()
    start = p.q_sample(x0, 3, torch.Generator().manual_seed(1))
    seen = []

    def oracle(x, t, c):
        seen.append(int(t[0]))
        assert x.shape == x0.shape and t.shape == (4,)
        return x0

    out = sampler(oracle, start, None, generator=torch.Generator().manual_seed(2), process=p, start=3)
    assert torch.equal(out, x0)
    assert seen == ([3, 2, 1] if sampler.steps is None else [3, 1])


def test_a_categorical_sampler_and_a_gaussian_one_refuse_each_other():
    with pytest.raises(CompatibilityError, match="is a categorical; use one of: categorical, categorical-ddim"):
        ambiseg.compose(prior="uniform-mask", transport={"name": "categorical-diffusion", "width": 8}, sampler="ddpm")
    with pytest.raises(CompatibilityError, match="integrates categorical"):
        ambiseg.compose(prior="noise", transport={"name": "cond-ddpm", "width": 8}, sampler="categorical")
    with pytest.raises(CompatibilityError, match="uniform-mask"):
        ambiseg.compose(prior="noise", transport={"name": "categorical-diffusion", "width": 8}, sampler="categorical")
    with pytest.raises(CompatibilityError, match="categorical process"):
        CategoricalAncestral()(lambda x, t, c: x, torch.zeros(1, 1, 2, 2), None)


# ---- recipes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ccdm", "berdiff"])
def test_samples_are_binary_masks(name):
    method = woken_smoke_build(name)
    out = method.sample(torch.rand(2, 1, 16, 16), 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 16, 16) and set(out.unique().tolist()) <= {0.0, 1.0}


def test_the_uniform_prior_gives_a_uniform_start():
    method = ambiseg.build("ccdm", preset="smoke")
    prior = method.prior.sample(
        method.prior.condition(torch.rand(1, 1, 64, 64)), 8, generator=torch.Generator().manual_seed(0)
    )
    start = method.transport.initial_state(prior.flatten(0, 1), generator=torch.Generator().manual_seed(1))
    assert prior.shape == (1, 8, 1, 64, 64) and start.shape == (8, 1, 64, 64)
    assert set(start.unique().tolist()) == {0.0, 1.0} and abs(float(start.mean()) - 0.5) < 0.02


def test_three_classes_train_and_sample_end_to_end():
    tiny = {"name": "categorical-diffusion", "classes": 3, "steps": 10, "width": 8, "mults": (1, 2), "blocks": 1}
    method = ambiseg.compose(
        prior="uniform-mask", transport={**tiny, "attention": False}, sampler={"name": "categorical", "steps": 3}
    )
    terms = method.loss(toy_batch(), "transport")
    assert all(torch.isfinite(v) for v in terms.values())
    out = method.sample(torch.rand(1, 1, 16, 16), 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 16, 16) and set(out.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ["ccdm", "berdiff"])
def test_one_smoke_training_step_is_finite(name):
    torch.manual_seed(0)
    method = ambiseg.build(name, preset="smoke", train={"transport": {"steps": 1}})
    history = (
        Trainer(method, data.build("synthetic", size=16, num_annotators=2, sizes=(4, 1, 1)), progress=False, seed=0)
        .fit()
        .history
    )
    assert len(history) == 1 and math.isfinite(history[0]["loss"])


@pytest.mark.parametrize("name", ["ccdm", "berdiff"])
def test_the_loss_falls_when_fitting_four_toy_images(name):
    """The bound at a uniform step is noisy from step to step, so it is compared on fixed draws."""
    batch = toy_batch(4)

    def fixed_loss() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(float(method.loss(batch, "transport")["loss"]) for _ in range(10)) / 10

    torch.manual_seed(0)
    method = ambiseg.build(name, preset="smoke")
    before = fixed_loss()
    optimiser = torch.optim.Adam(method.begin_stage("transport"), lr=3e-3)
    for _ in range(50):
        optimiser.zero_grad()
        method.loss(batch, "transport")["loss"].backward()
        optimiser.step()
    assert fixed_loss() < 0.5 * before


def test_recipes_are_the_papers_settings():
    ccdm, berdiff = ambiseg.build("ccdm"), ambiseg.build("berdiff")
    for method in (ccdm, berdiff):
        assert method.stages == ("transport",) and method.transport.kind == "categorical"
        assert method.prior.draws == "mask" and method.transport.process.classes == 2
    assert (ccdm.transport.process.steps, ccdm.transport.process.reverse, ccdm.transport.prediction) == (
        250,
        "mixture",
        "x0",
    )
    assert ccdm.transport.ce_weight == 0 and isinstance(ccdm.sampler, CategoricalAncestral) and ccdm.sampler.nfe is None
    assert (berdiff.transport.process.steps, berdiff.transport.process.reverse, berdiff.transport.prediction) == (
        1000,
        "plugin",
        "flip",
    )
    assert (
        berdiff.transport.ce_weight == 1 and isinstance(berdiff.sampler, CategoricalDDIM) and berdiff.sampler.nfe == 10
    )


def test_paper_presets_build():
    ccdm = ambiseg.build("ccdm", preset="paper-lidc")
    assert ccdm.config["image_size"] == 128 and ccdm.num_parameters() == 4_023_073
    assert ccdm.train_config["transport"]["ema"] == 0.9999 and ccdm.train_config["transport"]["min_lr"] == 1e-6
    with torch.no_grad():
        out = ccdm.transport(torch.zeros(1, 1, 128, 128), torch.tensor([250]), torch.rand(1, 1, 128, 128))
    assert out.shape == (1, 1, 128, 128)
    assert ambiseg.build("berdiff", preset="paper-lidc").num_parameters() == 59_604_097
    isic = ambiseg.build("ccdm", preset="paper-isic3")
    assert isic.config["in_channels"] == 3 and isic.transport.denoiser.in_channels == 4
