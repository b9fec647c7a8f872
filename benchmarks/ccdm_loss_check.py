"""Does a categorical-diffusion denoiser localise LIDC nodules under a CPU budget, with and without
the x_0 cross-entropy beside the KL? (docs/methods/ccdm.md, "ccdm's CPU presets add the x_0
cross-entropy")

    OMP_NUM_THREADS=1 ambiseg train ccdm --data lidc --root ../shared/data/lidc-idri-slices.zip --preset cpu \\
        --set transport.ce_weight=0 --set train.transport.steps=500 --set train.transport.val_every=250 \\
        --set train.transport.val_images=48 --out /tmp/ccdm-kl --no-progress
    OMP_NUM_THREADS=1 python benchmarks/ccdm_loss_check.py /tmp/ccdm-kl/last.safetensors --ce 0
    OMP_NUM_THREADS=1 python benchmarks/ccdm_loss_check.py /tmp/ccdm-kl/last.safetensors --ce 1

From the checkpoint's weights it trains `--steps` more steps on training slices that hold a nodule
(every 7th slice with more than 30 marked pixels), batch 8, Adam lr 1e-3, k uniform in 1..T,
loss KL + ce x cross-entropy, and prints, every 50 steps, the denoiser's mean foreground
probability inside and outside the first rater's mask at k = 1, 10 and 50 on 16 of them.
"""

from __future__ import annotations

import argparse
import time

import torch

from ambiseg.checkpoint import load_method
from ambiseg.data.spec import DataSpec
from ambiseg.losses import pick_annotator
from ambiseg.runtime import collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--ce", type=float, required=True, help="weight of the x_0 cross-entropy")
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(0)
    method, ckpt = load_method(args.checkpoint)
    train = DataSpec.from_dict(ckpt.meta["data"]).build_splits()["train"]
    transport, process = method.transport, method.transport.process
    nodules = [i for i in range(0, len(train), 7) if train[i]["masks"].sum() > 30][:400]
    probe = collate([train[i] for i in nodules[:16]])

    def foreground() -> list[tuple[int, float, float]]:
        x0 = process.from_mask(probe["masks"].float()[:, :1])
        out = []
        with torch.no_grad():
            for k in (1, 10, 50):
                xk = process.q_sample(x0, k)
                fg = transport.log_x0(xk, torch.full((16,), k), probe["image"]).exp()[:, 1]
                out.append((k, round(fg[x0[:, 0] > 0].mean().item(), 3), round(fg[x0[:, 0] == 0].mean().item(), 4)))
        return out

    print("before", foreground())
    optimizer = torch.optim.Adam(transport.parameters(), lr=1e-3)
    transport.train()
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = collate([train[nodules[int(i)]] for i in torch.randint(len(nodules), (8,))])
        x0 = process.from_mask(pick_annotator(batch["masks"].float()).round())
        k = torch.randint(1, process.steps + 1, (8,))
        xk = process.q_sample(x0, k)
        log_p = transport.log_x0(xk, k, batch["image"])
        loss = process.kl(x0, xk, process.compact(log_p.exp()), k).mean()
        loss = loss - args.ce * (process.full(x0) * log_p).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(step, round(loss.item(), 5), foreground(), f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
