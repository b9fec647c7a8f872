"""Rewrite a finished checkpoint's config to today's names without touching its weights, and prove
that nothing changed: the migrated config must build a network that takes the weights as they
are and draws bit-identical samples.

    python benchmarks/migrate_checkpoint.py OLD.safetensors NEW.safetensors --tdpm-transport
    python benchmarks/migrate_checkpoint.py OLD.safetensors NEW.safetensors --drop transport.beta_start \
        --drop transport.beta_end

- `--tdpm-transport`: a `cimd` transport with `latent_dim=0` (how `tdpm` was written before the
  transport `cond-ddpm` existed) becomes `cond-ddpm` (the latent options dropped).
- `--drop KEY`: remove an option stated explicitly at its default value (a run saved before the
  option's default became `None`, e.g. the linear schedule's `beta_start`/`beta_end`).

Used for the lidc-v1 seed-0 rows of `tdpm` and `cimd` (docs/leaderboard.md). The optimiser and
RNG state are carried over unchanged.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ambiseg.checkpoint import load_checkpoint, load_weights
from ambiseg.files import atomic_path
from ambiseg.method import Method

LATENT_OPTIONS = ("latent_dim", "kl_weight", "encoder_widths", "encoder_convs")


def migrate(config: dict, *, tdpm_transport: bool, drop: list[str]) -> dict:
    new = copy.deepcopy(config)
    if tdpm_transport:
        transport = new["transport"]
        if transport.get("name") != "cimd" or transport.get("latent_dim") != 0:
            raise SystemExit("--tdpm-transport: the checkpoint's transport is not cimd with latent_dim=0")
        transport["name"] = "cond-ddpm"
        for key in LATENT_OPTIONS:
            transport.pop(key, None)
    for key in drop:
        part, _, option = key.partition(".")
        if option not in new.get(part, {}):
            raise SystemExit(f"--drop {key}: the config has no such option")
        del new[part][option]
    return new


def samples(method: Method) -> torch.Tensor:
    size = int(method.config.get("image_size") or 32)
    image = torch.rand(
        2, int(method.config.get("in_channels") or 1), size, size, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        return method.eval().sample(image, 3, generator=torch.Generator().manual_seed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--tdpm-transport", action="store_true")
    parser.add_argument("--drop", action="append", default=[])
    args = parser.parse_args()
    ckpt = load_checkpoint(args.src)
    old = Method.from_config(ckpt.config)
    load_weights(old, ckpt, source=args.src)
    config = migrate(ckpt.config, tdpm_transport=args.tdpm_transport, drop=args.drop)
    new = Method.from_config(config)
    load_weights(new, ckpt, source=f"{args.src} (migrated config)")  # every tensor name and shape fits
    if not torch.equal(samples(old), samples(new)):
        raise SystemExit("the migrated config samples differently; nothing written")
    with safe_open(args.src, framework="pt") as fh:
        meta = json.loads(fh.metadata()["ambiseg"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["config"] = config
    meta["migrated_from"] = {"file": args.src, "by": "benchmarks/migrate_checkpoint.py", "changes": vars(args)}
    with atomic_path(args.dst) as tmp:
        save_file(tensors, str(tmp), metadata={"ambiseg": json.dumps(meta)})
    print(f"wrote {args.dst}: same weights, same samples, config {ckpt.config['transport']} -> {config['transport']}")


if __name__ == "__main__":
    main()
