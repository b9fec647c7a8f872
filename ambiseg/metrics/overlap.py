"""Pairwise intersections, IoU and Dice of mask sets from one batched matrix product.

For flattened 0/1 masks `x [B, N, P]`, `x @ x^T` holds every pairwise intersection |a & b|
and, on its diagonal, every mask size |a|. The products of 0/1 values are exact integers in
float32 while P < 2^24 (float64 above), so IoU and Dice are computed from exact counts.
Only the bounding box of the union of an image's masks is flattened (`FlatMasks`): the
pixels outside it are zero in every mask and change no count.
Conventions (public code of Prob. U-Net / PHiSeg / CIMD, ../shared/PAPER.md "Metrics"):
IoU = |a & b| / |a | b| and Dice = 2|a & b| / (|a| + |b|), both 1 when a and b are empty
(so one empty mask against a non-empty one scores 0).
"""

from __future__ import annotations

import dataclasses

import torch
from einops import rearrange
from torch import Tensor

from .inputs import check_pair

__all__ = [
    "Overlaps",
    "FlatMasks",
    "flatten",
    "flatten_pair",
    "iou_from_counts",
    "dice_from_counts",
    "pair_counts",
    "pairwise_iou",
    "pairwise_dice",
]

_EXACT_FLOAT32 = 2**24
_XY, _XY_AXES = ("x", "y"), ("[B, N, H, W]", "[B, M, H, W]")


@dataclasses.dataclass(frozen=True)
class FlatMasks:
    """0/1 masks of several sets, flattened over each image's crop of the union of all masks.

    Pixels outside every mask of an image add nothing to any intersection or size, so each
    image keeps only the bounding box of the union of its masks, flattened and zero-padded
    to the largest box of the batch: `values [B, N, P_box]`. `pixels` is the full H*W, so
    `padding = pixels - P_box` zero pixels are implicit (NCC's correlations need them).
    """

    values: Tensor  # [B, N, P_box] float 0/1
    pixels: int

    def __getitem__(self, masks: slice) -> FlatMasks:
        """A slice of the masks along N (e.g. the first k samples), same crop."""
        return FlatMasks(self.values[:, masks], self.pixels)

    @property
    def padding(self) -> int:
        """Implicit all-zero pixels per image: H*W minus the stored ones."""
        return self.pixels - self.values.shape[-1]


def _boxes(union: Tensor) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each image's foreground in bool `union [B, H, W]`; 1x1 when empty."""
    rows, cols = union.any(dim=2), union.any(dim=1)
    boxes = []
    for r, c in zip(rows.cpu(), cols.cpu(), strict=True):
        rr, cc = r.nonzero().flatten().tolist(), c.nonzero().flatten().tolist()
        boxes.append((rr[0], rr[-1] + 1, cc[0], cc[-1] + 1) if rr else (0, 1, 0, 1))
    return boxes


def flatten(*sets: Tensor) -> FlatMasks:
    """Bool mask sets `[B, N_i, H, W]` of the same images -> `FlatMasks` `[B, sum N_i, P_box]` of 0/1.

    Each image is cropped to the bounding box of the union of all its masks (1 x 1 when all
    are empty) and converted once into one buffer (no bool concatenation); float64 only
    when float32 cannot count the pixels exactly.
    """
    b, h, w = sets[0].shape[0], sets[0].shape[-2], sets[0].shape[-1]
    union = sets[0].view(torch.uint8).amax(dim=1)  # uint8 max: far faster than bool any on CPU
    for x in sets[1:]:
        union = torch.maximum(union, x.view(torch.uint8).amax(dim=1))
    boxes = _boxes(union.bool())
    size = max((bottom - top) * (right - left) for top, bottom, left, right in boxes)
    dtype = torch.float32 if size < _EXACT_FLOAT32 else torch.float64
    out = torch.empty(b, sum(x.shape[1] for x in sets), size, dtype=dtype, device=sets[0].device)
    for i, (top, bottom, left, right) in enumerate(boxes):
        start, area = 0, (bottom - top) * (right - left)
        out[i, :, area:].zero_()
        for x in sets:
            crop = rearrange(x[i, :, top:bottom, left:right], "n h w -> n (h w)")
            out[i, start : start + x.shape[1], :area].copy_(crop)
            start += x.shape[1]
    return FlatMasks(out, h * w)


def iou_from_counts(inter: Tensor, size_x: Tensor, size_y: Tensor) -> Tensor:
    """IoU `[B, N, M]` from intersections `[B, N, M]` and sizes `[B, N]`, `[B, M]`; 1 if both empty."""
    union = size_x[..., :, None] + size_y[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def dice_from_counts(inter: Tensor, size_x: Tensor, size_y: Tensor) -> Tensor:
    """Dice `[B, N, M]` from intersections and sizes; 1 if both masks are empty."""
    total = size_x[..., :, None] + size_y[..., None, :]
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(inter))


def flatten_pair(x: Tensor, y: Tensor) -> tuple[FlatMasks, FlatMasks]:
    """`flatten(x, y)` split back into the two sets (same crop, so pixels line up)."""
    flat = flatten(x, y)
    return flat[: x.shape[1]], flat[x.shape[1] :]


def pair_counts(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersections `[B, N, M]` (one bmm) and sizes `[B, N]`, `[B, M]` of bool masks `x`, `y`."""
    fx, fy = (f.values for f in flatten_pair(x, y))
    return torch.bmm(fx, fy.transpose(1, 2)), fx.sum(-1), fy.sum(-1)


def pairwise_iou(x: Tensor, y: Tensor) -> Tensor:
    """IoU of every pair of masks `x [B, N, H, W]`, `y [B, M, H, W]` (binarised at 0.5) -> `[B, N, M]`."""
    return iou_from_counts(*pair_counts(*check_pair(x, y, names=_XY, axes=_XY_AXES)))


def pairwise_dice(x: Tensor, y: Tensor) -> Tensor:
    """Dice of every pair of masks `x [B, N, H, W]`, `y [B, M, H, W]` (binarised at 0.5) -> `[B, N, M]`."""
    return dice_from_counts(*pair_counts(*check_pair(x, y, names=_XY, axes=_XY_AXES)))


@dataclasses.dataclass(frozen=True)
class Overlaps:
    """Pairwise counts within samples S, within a reference set Y, and across them.

    Every set metric (GED, HM-IoU, MDM, D_a) needs only these counts, so `evaluate` computes
    them once for all S samples and takes the first k with `head(k)`.
    """

    inter_ss: Tensor  # [B, S, S]
    inter_sy: Tensor  # [B, S, A]
    inter_yy: Tensor  # [B, A, A]
    size_s: Tensor  # [B, S]
    size_y: Tensor  # [B, A]
    pixels: int  # H * W

    @classmethod
    def of(cls, samples: Tensor, *references: Tensor) -> tuple[Overlaps, ...]:
        """Counts of bool `samples [B, S, H, W]` against each bool reference `[B, A_r, H, W]`."""
        return cls.from_flat(flatten(samples, *references), samples.shape[1], *(r.shape[1] for r in references))

    @classmethod
    def from_flat(cls, flat: FlatMasks, samples: int, *references: int) -> tuple[Overlaps, ...]:
        """Counts from `flatten(samples, *references)`: one matrix product serves every set."""
        inter = torch.bmm(flat.values, flat.values.transpose(1, 2))
        sizes = torch.diagonal(inter, dim1=1, dim2=2)
        out, start = [], samples
        for count in references:
            stop = start + count
            out.append(
                cls(
                    inter[:, :samples, :samples],
                    inter[:, :samples, start:stop],
                    inter[:, start:stop, start:stop],
                    sizes[:, :samples],
                    sizes[:, start:stop],
                    flat.pixels,
                )
            )
            start = stop
        return tuple(out)

    def head(self, k: int) -> Overlaps:
        """The counts of the first `k` samples only."""
        return dataclasses.replace(
            self, inter_ss=self.inter_ss[:, :k, :k], inter_sy=self.inter_sy[:, :k], size_s=self.size_s[:, :k]
        )

    @property
    def iou_ss(self) -> Tensor:
        """IoU between samples `[B, S, S]`."""
        return iou_from_counts(self.inter_ss, self.size_s, self.size_s)

    @property
    def iou_sy(self) -> Tensor:
        """IoU of each sample with each reference mask `[B, S, A]`."""
        return iou_from_counts(self.inter_sy, self.size_s, self.size_y)

    @property
    def iou_yy(self) -> Tensor:
        """IoU between reference masks `[B, A, A]`."""
        return iou_from_counts(self.inter_yy, self.size_y, self.size_y)

    @property
    def dice_sy(self) -> Tensor:
        """Dice of each sample with each reference mask `[B, S, A]`."""
        return dice_from_counts(self.inter_sy, self.size_s, self.size_y)
