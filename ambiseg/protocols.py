"""Named, versioned evaluation protocols: what a leaderboard row was measured on.

A protocol fixes the data (dataset, patient split and its seed, the test slices), the sample
counts, the training seeds and budget, and the metric conventions. `ambiseg bench --protocol
NAME` applies it, checks that the test slices are exactly the protocol's (the SHA-256 of their
ids; a different copy of the data is refused) and writes the protocol into every record; the
leaderboard never puts records of two protocols in one table. Changing anything here makes a
new version (`lidc-v2`), never an edit of `lidc-v1`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, DataError, closest

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "ids_digest", "over_budget"]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (see the module docstring)."""

    name: str
    dataset: str
    data_settings: dict[str, Any]  # --set data.* keys, applied over the bench preset's
    test_images: int
    test_ids_sha256: str  # of the test slice ids, one per line, in dataset order
    counts: tuple[int, ...] = (16, 32, 100)
    seeds: tuple[int, ...] = (0, 1, 2)
    train_budget_minutes: int = 40
    conventions: str = ""
    preset: str = "cpu"  # the bench preset `ambiseg bench --protocol` uses unless --preset is given

    def check_test_ids(self, ids: Sequence[str], *, where: str) -> None:
        """Refuse a test split that is not exactly this protocol's slices."""
        if len(ids) != self.test_images or ids_digest(ids) != self.test_ids_sha256:
            raise DataError(
                f"{where}: the test split ({len(ids)} slices, ids sha256 {ids_digest(ids)[:12]}) is not protocol "
                f"{self.name}'s ({self.test_images} slices, {self.test_ids_sha256[:12]}); is this the same copy of "
                "the data (docs/leaderboard.md lists the protocol's slice ids)?"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CONVENTIONS_V1 = (
    "samples thresholded at 0.5; d = 1 - IoU (two empty masks: IoU 1); GED squared (no root), "
    "a V-statistic over all ordered pairs, self-pairs included; HM-IoU: samples and raters tiled "
    "to lcm(S, A) and matched by the Hungarian algorithm; 95% intervals by bootstrap over test "
    "images and training seeds, both resampled (docs/metrics.md)"
)


def ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


PROTOCOLS = {
    "lidc-v1": Protocol(
        name="lidc-v1",
        dataset="lidc",
        # patients split 60/20/20 with seed 0; 500 test slices spanning all 142 test patients (one
        # seeded slice each, then seeded). Training and validation data are the bench preset's.
        data_settings={"data.seed": 0, "data.test.limit": 500, "data.test.spread": True},
        test_images=500,
        test_ids_sha256="e9ad54a6495f0f19438ce4a673d00ebe7e755c64b56569f234453b41a723dffc",
        conventions=_CONVENTIONS_V1,
    ),
    # lidc-v1's data, split and 500 test slices; the methods' `cpu-lidc-v2` presets (the 40-minute
    # budget filled, checkpoints chosen on 200 validation slices) and the plausibility metrics
    "lidc-v2": Protocol(
        name="lidc-v2",
        dataset="lidc",
        data_settings={"data.seed": 0, "data.test.limit": 500, "data.test.spread": True},
        test_images=500,
        test_ids_sha256="e9ad54a6495f0f19438ce4a673d00ebe7e755c64b56569f234453b41a723dffc",
        preset="cpu-v2",
        conventions=_CONVENTIONS_V1
        + "; stray, missed-consensus and soft rates over all samples, images where one is undefined left out",
    ),
}


def over_budget(protocol: dict[str, Any] | None, train_s: float) -> bool:
    """Whether `train_s` seconds of training exceed the budget of `protocol` (a record's protocol
    dict, `Protocol.to_dict()`); never for a record without a protocol or budget."""
    minutes = (protocol or {}).get("train_budget_minutes")
    return isinstance(minutes, (int, float)) and train_s > 60 * minutes


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{name}'{closest(name, PROTOCOLS)}; protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
