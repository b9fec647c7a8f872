"""Sampling throughput against the hardware: matmul peak, the paper-width ST-Net, and the end-to-end
time of 100 samples for ATFM and the diffusion baseline, in one run on one device.

Run (CPU, or CUDA when present; `AMBISEG_DEVICE=cpu|cuda` forces one):

    python -m pytest benchmarks/test_throughput.py -p no:cacheprovider -s --benchmark-json throughput.json

- `test_matmul_peak`: GFLOP/s of a square matrix product (fp32, bf16), the device's practical peak
  measured in the same run (so the ratios below do not depend on a datasheet).
- `test_stnet_forward`: the ATFM ST-Net at the paper's LIDC width (`atfm` preset `paper-lidc`,
  128 x 128) at batch 1, 8 and 32, contiguous and channels-last: samples/s (states per second
  through one network evaluation), achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode)
  and their ratio to the matmul peak of the same precision (`extra_info["of_peak"]`).
- `test_hundred_samples`: 100 samples of one image end to end through `Method.sample` for atfm
  (GTR + 25 Euler steps), cimd with DDPM over T = 100 and T = 1000, and cimd with DDIM-25
  (T = 1000). On CUDA at the papers' widths (`paper-lidc`, 128 px); on CPU at the cpu-lidc
  presets (64 px; the paper widths would take ~40 minutes per image there) with T = 1000 DDPM
  left out unless `AMBISEG_BENCH_SLOW=1`. Each prints its time over ATFM's. On CUDA also ATFM
  compiled (`--compile`), compiled with channels-last, with CUDA graphs (`--compile-mode
  reduce-overhead`) and compiled with 5 Euler steps: the candidates for 100 samples in <= 1 s.

GPU timings synchronise before reading the clock and report peak allocated memory.
docs/sampling-speed.md lists the measured numbers and the commands.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ambiseg
from ambiseg.evaluation import PRECISIONS, InferenceOptions

DEVICE = torch.device(os.environ.get("AMBISEG_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
CUDA = DEVICE.type == "cuda"
SLOW = CUDA or os.environ.get("AMBISEG_BENCH_SLOW") == "1"
PRESET, SIZE = ("paper-lidc", 128) if CUDA else ("cpu-lidc", 64)
MATMUL_N = 8192 if CUDA else 2048
LAYOUTS = ("contiguous", "channels_last")
# Without native bf16 instructions torch's CPU bf16 kernels are scalar fallbacks (measured on the
# 2-core AMD EPYC dev machine: a 2048^3 bf16 matmul took 84 s, fp32 0.46 s); time bf16 only where
# they exist.
BF16 = CUDA or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _skip_slow_bf16(precision: str) -> None:
    if precision == "bf16" and not BF16:
        pytest.skip("this CPU has no native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported() is False)")


_PEAK: dict[str, float] = {}  # precision -> matmul GFLOP/s measured in this run
_E2E: dict[str, float] = {}  # label -> seconds per 100 samples


def _synced(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        out = fn()
        if CUDA:
            torch.cuda.synchronize(DEVICE)
        return out

    return run


def _rounds(seconds_guess: float) -> int:
    return 1 if seconds_guess > 20 else 3


@pytest.fixture(autouse=True)
def _reset_peak_memory():
    if CUDA:
        torch.cuda.reset_peak_memory_stats(DEVICE)
    yield


def _record(benchmark: Any, **info: Any) -> None:
    if CUDA:
        info["peak_mb"] = torch.cuda.max_memory_allocated(DEVICE) / 2**20
    info["device"] = torch.cuda.get_device_name(DEVICE) if CUDA else "cpu"
    info["threads"] = torch.get_num_threads()
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="matmul-peak")
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_matmul_peak(benchmark, precision):
    _skip_slow_bf16(precision)
    dtype = PRECISIONS[precision]
    g = torch.Generator(DEVICE).manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, generator=g, device=DEVICE).to(dtype) for _ in range(2))
    out = benchmark.pedantic(_synced(lambda: a @ b), rounds=5, warmup_rounds=2)
    assert out.shape == (MATMUL_N, MATMUL_N) and torch.isfinite(out).all()
    if benchmark.stats is not None:
        _PEAK[precision] = 2 * MATMUL_N**3 / benchmark.stats.stats.min / 1e9
        _record(benchmark, gflops=_PEAK[precision], n=MATMUL_N)
        print(f"\nmatmul {precision} on {DEVICE}: {_PEAK[precision]:.0f} GFLOP/s")


@pytest.fixture(scope="module")
def stnet() -> ambiseg.Transport:
    torch.manual_seed(0)
    transport = ambiseg.build("atfm", preset="paper-lidc", image_size=128).transport
    return transport.to(DEVICE).eval()


def _forward_flops(transport: ambiseg.Transport, size: int) -> float:
    x = torch.rand(1, 1, size, size, device=DEVICE)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        transport(x, torch.full((1,), 0.5, device=DEVICE), x)
    return float(counter.get_total_flops())


@pytest.mark.benchmark(group="stnet-forward")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_stnet_forward(benchmark, stnet, precision, batch, layout):
    _skip_slow_bf16(precision)
    g = torch.Generator(DEVICE).manual_seed(batch)
    x = torch.rand(batch, 1, 128, 128, generator=g, device=DEVICE)
    image = torch.rand(batch, 1, 128, 128, generator=g, device=DEVICE)
    t = torch.rand(batch, generator=g, device=DEVICE)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    stnet.to(memory_format=memory_format)
    options = InferenceOptions(precision=precision)
    flops = _forward_flops(stnet, 128) * batch

    def forward() -> torch.Tensor:
        with torch.inference_mode(), options.autocast(DEVICE):
            return stnet(x, t, image)

    out = benchmark.pedantic(_synced(forward), rounds=_rounds(flops / 150e9), warmup_rounds=1)
    stnet.to(memory_format=torch.contiguous_format)
    assert out.shape == (batch, 1, 128, 128) and torch.isfinite(out).all()
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.min
        gflops = flops / seconds / 1e9
        info = {"samples_per_s": batch / seconds, "gflops": gflops, "gflop_per_forward": flops / 1e9}
        if precision in _PEAK:
            info["of_peak"] = gflops / _PEAK[precision]
        _record(benchmark, **info)
        share = f" = {info['of_peak']:.0%} of the {precision} matmul peak" if "of_peak" in info else ""
        print(
            f"\nST-Net {precision} batch {batch} {layout}: {batch / seconds:.2f} samples/s, {gflops:.0f} GFLOP/s{share}"
        )


E2E: dict[str, dict[str, Any]] = {
    "atfm": {"name": "atfm"},
    "atfm-compiled": {"name": "atfm", "compile": True},
    # towards 100 samples in <= 1 s on one GPU: layout, CUDA graphs, and the steps ATFM needs
    "atfm-compiled-cl": {"name": "atfm", "compile": True, "channels_last": True},
    "atfm-graphs": {"name": "atfm", "compile": True, "compile_mode": "reduce-overhead"},
    "atfm-compiled-euler5": {"name": "atfm", "compile": True, "sampler": {"name": "euler", "steps": 5}},
    "cimd-ddpm100": {"name": "cimd", "transport": {"steps": 100}, "sampler": {"name": "ddpm"}},
    "cimd-ddpm1000": {"name": "cimd", "transport": {"steps": 1000}, "sampler": {"name": "ddpm"}},
    "cimd-ddim25": {"name": "cimd", "transport": {"steps": 1000}, "sampler": {"name": "ddim", "steps": 25}},
}
E2E_PRECISIONS = ("fp32", "bf16") if BF16 else ("fp32",)


@pytest.mark.benchmark(group="hundred-samples")
@pytest.mark.parametrize("label", list(E2E))
@pytest.mark.parametrize("precision", E2E_PRECISIONS)
def test_hundred_samples(benchmark, label, precision):
    if label == "cimd-ddpm1000" and not SLOW:
        pytest.skip("T = 1000 DDPM on CPU takes tens of minutes; set AMBISEG_BENCH_SLOW=1")
    if label == "cimd-ddpm1000" and CUDA and precision == "fp32":
        pytest.skip("T = 1000 DDPM at paper width in fp32 takes minutes of GPU time; its bf16 row is timed")
    spec = dict(E2E[label])
    compiled = spec.pop("compile", False)
    layout = {k: spec.pop(k) for k in ("channels_last", "compile_mode") if k in spec}
    if compiled and not CUDA:
        pytest.skip("compiled sampling is timed here on CUDA only; on CPU compare `ambiseg eval --compile` runs")
    torch.manual_seed(0)
    method = ambiseg.build(spec.pop("name"), preset=PRESET, image_size=SIZE, **spec)
    max_batch = 100 if CUDA else None
    options = InferenceOptions(precision=precision, max_batch=max_batch, compile=compiled, **layout)
    options.prepare(method, DEVICE)
    image = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)).to(DEVICE)

    def draw() -> torch.Tensor:
        with options.autocast(DEVICE):
            return method.sample(image, 100, generator=torch.Generator(DEVICE).manual_seed(1), max_batch=max_batch)

    # warm up: a compiled transport with the timed shapes (compilation, CUDA graph capture), else 2 samples
    with options.autocast(DEVICE):
        warm = 100 if CUDA and compiled else 2
        method.sample(image, warm, generator=torch.Generator(DEVICE).manual_seed(0), max_batch=max_batch)
    out = benchmark.pedantic(_synced(draw), rounds=3 if CUDA and label.startswith("atfm") else 1, warmup_rounds=0)
    assert out.shape == (1, 100, SIZE, SIZE) and torch.isfinite(out.float()).all()
    if benchmark.stats is not None:
        seconds = benchmark.stats.stats.min
        key = f"{label}-{precision}"
        _E2E[key] = seconds
        info: dict[str, Any] = {"preset": PRESET, "size": SIZE, "nfe": method.sampler.nfe, "seconds": seconds}
        base = _E2E.get(f"atfm-{precision}")
        if base is not None and label != "atfm":
            info["vs_atfm"] = seconds / base
        _record(benchmark, **info)
        ratio = f" = {info['vs_atfm']:.1f} x atfm" if "vs_atfm" in info else ""
        print(f"\n{label} {precision} ({PRESET}, {SIZE} px): {seconds:.2f} s per 100 samples{ratio}")
