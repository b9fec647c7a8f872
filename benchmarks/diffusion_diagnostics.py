"""How well a trained diffusion transport recovers the mask from x_k, step by step.

For validation images with a non-empty majority mask, noise the majority mask to x_k (one
fixed noise draw), let the transport estimate x0 and report, per step k: abar_k, the MSE of
the network's output against its training target, the IoU of the x0 estimate (> 0) with the
majority mask, and the foreground fraction of that estimate. A chain whose estimate collapses
at large k cannot be sampled from noise, whatever the sampler.

    python benchmarks/diffusion_diagnostics.py runs/cimd/last.safetensors --out diag.json
"""

from __future__ import annotations

import argparse

import torch

from ambiseg.checkpoint import load_method
from ambiseg.data import DataSpec
from ambiseg.files import write_json

STEPS = (1, 5, 10, 20, 30, 50, 70, 90, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    method, ckpt = load_method(args.checkpoint)
    transport = method.transport
    val = DataSpec.from_dict(ckpt.meta["data"]).build("val")
    picked = [i for i in range(len(val)) if val[i]["masks"].float().mean(0).gt(0.5).any()][: args.images]
    images = torch.stack([val[i]["image"] for i in picked]).float()
    majority = torch.stack([(val[i]["masks"].float().mean(0) > 0.5).float() for i in picked])[:, None]
    x0 = 2 * majority - 1
    generator = torch.Generator().manual_seed(0)
    rows = []
    for k in (s for s in STEPS if s <= transport.schedule.steps):
        eps = torch.randn(x0.shape, generator=generator)
        steps = torch.full((len(picked),), k)
        xk = transport.schedule.q_sample(x0, steps, eps)
        with torch.no_grad():
            z = transport.posterior_net(torch.cat([images, x0], 1)).mu if transport.latent_dim else None
            out = transport.denoise(xk, steps, images, z)
            target = transport.target(x0, eps, steps)
            x0_hat = transport.estimate_x0(xk, steps, out).clamp(-1, 1)
        pred, truth = x0_hat > 0, majority > 0.5
        iou = ((pred & truth).sum((1, 2, 3)) / (pred | truth).sum((1, 2, 3)).clamp(min=1)).mean()
        rows.append(
            {
                "k": k,
                "abar": float(transport.schedule.alpha_bar[k]),
                "mse": float(((out - target) ** 2).mean()),
                "iou": float(iou),
                "foreground": float(pred.float().mean()),
            }
        )
        print(
            " ".join(
                f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in rows[-1].items()
            )
        )
    if args.out:
        write_json(
            args.out, {"checkpoint": args.checkpoint, "step": ckpt.meta.get("step"), "images": picked, "rows": rows}
        )


if __name__ == "__main__":
    main()
