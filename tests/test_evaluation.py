"""Streaming evaluation: each test image is scored as soon as its samples exist, only numbers
are kept and gathered, and the result is the one of sampling everything and scoring at once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import ambiseg
from ambiseg import data, evaluation, metrics
from ambiseg.runtime import collate

CPU = torch.device("cpu")


class CountingMethod(nn.Module):
    """Random probabilities from the given generator; logs ("sample", image index) per call."""

    def __init__(self, log: list[tuple[str, int]], seed: int) -> None:
        super().__init__()
        self.log, self.seed = log, seed

    def sample(self, images: torch.Tensor, n: int, generator: Any = None, max_batch: int | None = None) -> torch.Tensor:
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
        assert len(gens) == images.shape[0] or len(gens) == 1
        for gen in gens:
            index = gen.initial_seed() - self.seed * 100_003
            self.log.append(("sample", index) if index >= 0 else ("warmup", index))
        return torch.cat([torch.rand(1, n, *images.shape[-2:], generator=gen) for gen in gens])


def marked_images(n: int, size: int = 8) -> list[dict[str, Any]]:
    """Tiny items whose first annotation has i + 1 foreground pixels, so a scored image is known."""
    items = []
    for i in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0].view(-1)[: i + 1] = 1
        masks[1, : size // 2] = 1
        items.append(
            {
                "image": torch.rand(1, size, size),
                "masks": masks,
                "modes": masks.clone(),
                "mode_probs": torch.tensor([0.75, 0.25]),
            }
        )
    return items


def has_tensor(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(has_tensor(k) or has_tensor(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return any(has_tensor(x) for x in obj)
    return False


def test_matches_sampling_everything_then_scoring_the_batch():
    torch.manual_seed(0)
    method = ambiseg.build("act-gtr", preset="smoke", in_channels=1, image_size=16).eval()
    test = data.build("synthetic", split="test", size=16, sizes=(2, 2, 5))
    counts, seed, total = (2, 4), 3, 4
    result = evaluation.evaluate_method(method, test, counts=counts, seed=seed, device=CPU)

    samples = []
    with torch.no_grad():
        for i in range(len(test)):
            image = collate([test[i]])["image"]
            gen = torch.Generator(CPU).manual_seed(seed * 100_003 + i)
            samples.append(method.sample(image, total, generator=gen))  # probabilities: SoftShare reads them
    batch, s = collate([test[i] for i in range(len(test))]), torch.cat(samples)
    expected = {
        k: v.tolist()
        for k, v in metrics.evaluate(
            s, batch["masks"], counts=counts, modes=batch["modes"], probs=batch["mode_probs"]
        ).items()
    }
    assert any(d > 0 for d in expected["Diversity4"])  # the samples do vary, so seeding matters
    assert any(d > 0 for d in expected["SoftShare"])  # scored from the probabilities, not 0/1 masks
    np.testing.assert_equal(result["per_image"], expected)  # NaN where a metric is undefined
    assert list(result["per_image"]) == list(expected)  # same key order as well
    assert result["truth"] == {
        "mode_mass4": metrics.mode_mass(s, batch["modes"], batch["mode_probs"]).tolist(),
        "mode_probs": batch["mode_probs"].tolist(),
    }
    assert result["samples_per_image"] == total and len(result["sample_seconds"]) == len(test)
    assert all(t > 0 for t in result["sample_seconds"])
    assert result["memory_kind"] in ("process-peak-rss", None)


def test_scores_each_image_before_sampling_the_next(monkeypatch):
    log: list[tuple[str, int]] = []
    real_evaluate = metrics.evaluate

    def counting_evaluate(samples, annotations, *args, **kwargs):
        for row in annotations:  # the first annotation has i + 1 pixels
            log.append(("score", int(row[0].sum()) - 1))
        return real_evaluate(samples, annotations, *args, **kwargs)

    monkeypatch.setattr(evaluation.metrics, "evaluate", counting_evaluate)
    n, seed = 5, 1
    options = evaluation.InferenceOptions(image_batch=2)
    result = evaluation.evaluate_method(
        CountingMethod(log, seed), marked_images(n), counts=(2, 3), seed=seed, device=CPU, options=options
    )
    assert log[0][0] == "warmup"
    groups = [[0, 1], [2, 3], [4]]  # each group is sampled in one call, then its images are scored
    assert log[1:] == [(step, i) for group in groups for step in ("sample", "score") for i in group]
    assert all(len(values) == n for values in result["per_image"].values())
    assert len(result["truth"]["mode_mass3"]) == n == len(result["truth"]["mode_probs"])


def test_only_numbers_are_gathered(monkeypatch):
    payloads: list[Any] = []

    def inspecting_gather(obj):
        payloads.append(obj)
        return [obj]

    monkeypatch.setattr(evaluation.dist, "gather_objects", inspecting_gather)
    result = evaluation.evaluate_method(CountingMethod([], 0), marked_images(3), counts=(2,), seed=0, device=CPU)
    assert len(payloads) == 1 and not has_tensor(payloads[0])
    assert len(result["per_image"]["GED2"]) == 3


def test_two_simulated_ranks_gather_in_image_order(monkeypatch):
    method = CountingMethod([], seed=2)
    images = marked_images(5)
    single = evaluation.evaluate_method(method, images, counts=(2, 3), seed=2, device=CPU, warmup=False)

    class Gathered(Exception):
        pass

    def gather_rank0(obj):
        payloads.append(obj)
        raise Gathered  # rank 0 stops at the gather; rank 1 then gathers both payloads

    payloads: list[Any] = []
    monkeypatch.setattr(evaluation.dist, "world_size", lambda: 2)
    monkeypatch.setattr(evaluation.dist, "rank", lambda: 0)
    monkeypatch.setattr(evaluation.dist, "gather_objects", gather_rank0)
    with pytest.raises(Gathered):
        evaluation.evaluate_method(method, images, counts=(2, 3), seed=2, device=CPU, warmup=False)
    monkeypatch.setattr(evaluation.dist, "rank", lambda: 1)
    monkeypatch.setattr(evaluation.dist, "gather_objects", lambda obj: [payloads[0], obj])
    result = evaluation.evaluate_method(method, images, counts=(2, 3), seed=2, device=CPU, warmup=False)
    assert [x for _, x in method.log[5:]] == [0, 2, 4, 1, 3]  # rank 0 drew images 0, 2, 4; rank 1: 1, 3
    assert result["per_image"] == single["per_image"] and result["truth"] == single["truth"]
    assert len(result["sample_seconds"]) == 5


def test_results_do_not_depend_on_how_images_are_grouped():
    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="smoke", image_size=16)
    with torch.no_grad():  # wake the zero-initialised velocity head so the flow moves the samples
        method.transport.net.head.weight.normal_(std=0.1)
    test = data.build("synthetic", split="test", size=16, sizes=(2, 2, 5))
    runs = [
        evaluation.evaluate_method(
            method, test, counts=(3,), seed=4, device=CPU, options=evaluation.InferenceOptions(image_batch=k)
        )
        for k in (1, 2, 8)
    ]
    assert any(d > 0 for d in runs[0]["per_image"]["Diversity3"])
    for other in runs[1:]:
        for key, values in runs[0]["per_image"].items():
            assert other["per_image"][key] == pytest.approx(values, abs=1e-6, nan_ok=True), key
    assert [len(r["sample_seconds"]) for r in runs] == [5, 5, 5]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_batch": 0}, "--image-batch must be >= 1"),
        ({"max_batch": 0}, "--max-batch must be >= 1"),
        ({"precision": "fp16"}, "--precision is 'fp16'.*fp32, bf16"),
        ({"compile_mode": "fast"}, "--compile-mode is 'fast'.*default, reduce-overhead, max-autotune"),
    ],
)
def test_bad_inference_options_are_one_line(options, message):
    with pytest.raises(ambiseg.ConfigError, match=message):
        evaluation.InferenceOptions(**options)


@pytest.mark.parametrize(("mode", "passed"), [("default", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_mode_reaches_torch_compile(monkeypatch, mode, passed):
    method = ambiseg.build("atfm", preset="smoke", image_size=16)
    seen = []
    monkeypatch.setattr(method.transport, "compile", lambda **kw: seen.append(kw))
    evaluation.InferenceOptions(compile=True, compile_mode=mode).prepare(method, CPU)
    assert seen == [{"mode": passed}]


def test_an_empty_test_set_is_an_error():
    with pytest.raises(ambiseg.AmbisegError, match="empty"):
        evaluation.evaluate_method(CountingMethod([], 0), [], counts=(2,), seed=0, device=CPU)


def test_scores_are_fp32_even_when_sampling_runs_under_bf16_autocast():
    items = marked_images(3, size=16)
    log: list[tuple[str, int]] = []
    plain = evaluation.evaluate_method(CountingMethod(log, 0), items, counts=(4,), seed=0, device=CPU, warmup=False)
    options = evaluation.InferenceOptions(precision="bf16")
    under = evaluation.evaluate_method(
        CountingMethod(log, 0), items, counts=(4,), seed=0, device=CPU, warmup=False, options=options
    )
    for key, values in plain["per_image"].items():
        np.testing.assert_array_equal(np.asarray(under["per_image"][key]), np.asarray(values), err_msg=key)
