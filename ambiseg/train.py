"""The trainer: runs a method's stages in order, validates, checkpoints and resumes.

Determinism: batches come from a per-(seed, stage, epoch) permutation, the global RNG states
(which drive annotator draws, noise and t in the losses) are saved in every checkpoint, and
validation runs under a forked RNG, so a run resumed from any checkpoint ends with the same
weights as an uninterrupted one on the CPU.

Under torchrun the stage's loss runs inside `DistributedDataParallel`; every optimiser step
takes the same global batch of `batch_size` images whatever the world size: each rank takes
its strided share and splits it into `accumulate` micro-batches, each loss scaled by its share
of the rank's images, so the averaged gradient is the gradient of the global batch mean.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import distributed as dist
from .averaging import StageAverage
from .checkpoint import load_checkpoint, load_weights, optimizer_state, restore_rng, save_checkpoint
from .console import make_console
from .data.base import ItemDataset
from .data.spec import describe_data, training_data
from .errors import AmbisegError, ConfigError, TrainingError, closest
from .files import ensure_dir, write_text
from .lock import run_lock
from .method import Method
from .runtime import collate, seed_everything, to_device

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainingError",
    "make_optimizer",
    "learning_rate",
]

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class _StageLoss(torch.nn.Module):
    """`forward(batch) = method.loss(batch, stage)`, the module DDP wraps for one stage."""

    def __init__(self, method: Method, stage: str) -> None:
        super().__init__()
        self.method, self.stage = method, stage

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.method.loss(batch, self.stage)


def _decorrelate_ranks(seed: int, step: int) -> None:
    """Give every rank > 0 its own random stream (rank 0 keeps the single-process one)."""
    if dist.rank() > 0:
        torch.manual_seed(seed * 1_000_003 + step * 7919 + dist.rank())


def _check_moments(state: dict[str, Any], params: list[torch.nn.Parameter]) -> None:
    """Every per-parameter tensor of an optimiser state (Adam's moments, SGD's momentum) has its
    parameter's shape; `load_state_dict` checks only the counts."""
    for idx, entries in state["state"].items():
        if not 0 <= int(idx) < len(params):
            raise IndexError(f"optimiser state of parameter {idx} but the stage has {len(params)}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[int(idx)].shape:
                raise ValueError(
                    f"optimiser '{name}' of parameter {idx} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(params[int(idx)].shape)}"
                )


@dataclass
class TrainResult:
    seconds: float
    steps: dict[str, int]
    best: dict[str, float | None]
    history: list[dict[str, Any]] = field(default_factory=list)


def learning_rate(cfg: dict[str, Any], step: int, total: int) -> float:
    """The stage's learning rate for optimiser step `step` (0-based) of `total`.

    Linear warm-up over the first `warmup` steps (from lr / warmup to lr), then `schedule`:
    "constant", or "cosine" / "linear" decay from `lr` at the end of warm-up to `min_lr` at the
    last step. A pure function of the step, so resuming needs no scheduler state.
    """
    lr, warmup = float(cfg["lr"]), int(cfg.get("warmup") or 0)
    if step < warmup:
        return lr * (step + 1) / warmup
    schedule = cfg.get("schedule") or "constant"
    if schedule == "constant" or total - warmup <= 1:
        return lr
    floor = float(cfg.get("min_lr") or 0.0)
    progress = (step - warmup) / (total - warmup - 1)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return floor + (lr - floor) * shape


def make_optimizer(cfg: dict[str, Any], params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Optimiser from a stage's training config (`optimizer`, `lr`, `weight_decay`)."""
    name = str(cfg["optimizer"]).lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}'{closest(name, OPTIMIZERS)}; known: {', '.join(OPTIMIZERS)}")
    if not params:
        raise ConfigError("this stage has no trainable parameters")
    return OPTIMIZERS[name](params, lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay") or 0.0))


class Trainer:
    """Trains `method` on `train_set`, one stage after another.

    Args:
        method: the method to train (its `train_config` gives each stage's optimiser and length).
        train_set: dataset of dicts with `image` and `masks`.
        val_set: optional; each epoch the last stage is validated by GED on a few images
            (earlier stages by their loss) and the best weights are kept and restored.
        out_dir: where `last.safetensors` / `best.safetensors` go (None: no checkpoints).
        save_every: also checkpoint every this many optimiser steps.
        data: the data spec (`DataSpec.to_dict()`) recorded in every checkpoint, so evaluation
            defaults to the data the run was trained on.
        log: write the validation history here as CSV after every validation (learning curves:
            step, training loss, validation GED / HM-IoU / diversity or the stage's loss).
        channels_last: train with the convolution weights (and so their activations) in the
            channels-last memory format: the same computation with another float rounding, faster
            on the CPU (docs/training-speed.md). The method is given back contiguous. Off by
            default, which keeps every training bit for bit as before; resume with the setting
            the run started with to keep a resumed run equal to an uninterrupted one.
    """

    def __init__(
        self,
        method: Method,
        train_set: ItemDataset,
        val_set: ItemDataset | None = None,
        *,
        out_dir: str | Path | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        progress: bool = True,
        detect_anomaly: bool = False,
        save_every: int = 50,
        amp: bool = True,
        console: Console | None = None,
        data: dict[str, Any] | None = None,
        log: str | Path | None = None,
        channels_last: bool = False,
    ) -> None:
        if len(train_set) == 0:
            raise AmbisegError("the training set is empty; check the dataset root and split")
        if out_dir is not None and not method.has_config:
            raise ConfigError(
                f"method '{method.name}' was composed from instances, so its checkpoints could not be "
                "rebuilt; compose it from names or {name, **options} dicts, or train with out_dir=None"
            )
        self.data = data
        self.log = Path(log) if log is not None else None
        self.method, self.train_set, self.val_set = method, train_set, val_set
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed, self.device = int(seed), torch.device(device)
        self.progress, self.detect_anomaly, self.save_every = progress, detect_anomaly, max(1, int(save_every))
        self.amp = amp and self.device.type == "cuda"
        self.channels_last = bool(channels_last)
        self.console = console or make_console(stderr=True)
        self.history: list[dict[str, Any]] = []
        self._checked: dict[str, Any] | None = None

    # ---- schedule -------------------------------------------------------------------------
    def _stage_length(self, stage: str) -> tuple[int, int, int]:
        cfg = self.method.train_config[stage]
        bs = int(cfg["batch_size"])
        if bs < 1:
            raise ConfigError(f"train.{stage}.batch_size must be >= 1, got {bs}")
        per_epoch = math.ceil(len(self.train_set) / bs)
        steps = cfg.get("steps")
        total = int(steps) if steps is not None else int(cfg["epochs"]) * per_epoch
        if total < 1:
            raise ConfigError(f"train.{stage}: steps/epochs must give at least one step, got {total}")
        return bs, per_epoch, total

    def _epoch_batches(self, stage: str, epoch: int, bs: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.method.stages.index(stage) * 10_007 + epoch)
        perm = torch.randperm(len(self.train_set), generator=g).tolist()
        return [perm[i : i + bs] for i in range(0, len(perm), bs)]

    # ---- checkpoints ----------------------------------------------------------------------
    def _save(self, name: str, optimizer: torch.optim.Optimizer | None, **state: Any) -> None:
        if self.out_dir is not None and dist.is_main():
            bad = next(
                (
                    k
                    for k, v in self.method.state_dict().items()
                    if v.is_floating_point() and not torch.isfinite(v).all()
                ),
                None,
            )
            if bad is not None:
                raise TrainingError(
                    f"weight {bad} became non-finite in stage '{state.get('stage')}' at step "
                    f"{state.get('step')}; {name} is not written and the last good checkpoint is "
                    "kept; lower the learning rate, set train.<stage>.grad_clip or run with "
                    "--detect-anomaly"
                )
            save_checkpoint(
                self.out_dir / name,
                self.method,
                self.method.config,
                optimizer=optimizer,
                seed=self.seed,
                history=self.history,
                data=self.data,
                **state,
            )

    def check_resume(self) -> dict[str, Any] | None:
        """Load and check `out_dir/last.safetensors` for `fit(resume=True)` before anything is written.

        Refuses (one `AmbisegError` line) a checkpoint of another method, seed or network shape
        and a damaged training state (stage, step, RNG states, optimiser state); loads the
        weights. Returns the state `fit` continues from (None when there is no checkpoint).
        """
        path = self.out_dir / "last.safetensors" if self.out_dir else None
        if path is None or not path.exists():
            return None
        ckpt = load_checkpoint(path, method=self.method.name)
        meta = ckpt.meta
        if meta.get("seed") is not None and meta.get("seed") != self.seed:
            raise ConfigError(
                f"{path} was trained with seed {meta.get('seed')}, not {self.seed}; resume it with "
                f"--seed {meta.get('seed')} (the batch order depends on it)"
            )
        self._check_data(meta.get("data"), path)
        self._check_state(meta, path)
        best = path.with_name("best.safetensors")
        if best.exists():  # read at a stage's end: a damaged one would fail after the training
            load_checkpoint(best, method=self.method.name)
        else:
            meta = self._forget_lost_best(meta, best)
        load_weights(
            self.method,
            ckpt,
            source=str(path),
            fix="resume with the options the run was trained with (drop the --set that changes the network) "
            "or train into a new --out",
        )
        try:
            opt_state = optimizer_state(ckpt)
            if opt_state is not None and meta["stage_index"] < len(self.method.stages):
                stage = self.method.stages[meta["stage_index"]]
                cfg = self.method.train_config[stage]
                params = [p for m in self.method.stage_modules(stage) for p in m.parameters()]
                make_optimizer(cfg, params).load_state_dict(opt_state)  # a throwaway optimiser: a check only
                _check_moments(opt_state, params)
            self._check_average(meta, ckpt, source=str(path))
            rng = torch.get_rng_state()
            restore_rng(ckpt.rng, meta.get("rng", {}))
            torch.set_rng_state(rng)
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise TrainingError(
                f"{path}: training state is damaged ({type(exc).__name__}: {exc}); "
                "the weights load but the run cannot continue exactly; train again"
            ) from None
        self._checked = {**meta, "optimizer_state": opt_state, "_ckpt": ckpt}
        return self._checked

    def _forget_lost_best(self, meta: dict[str, Any], best: Path) -> dict[str, Any]:
        """Without `best.safetensors` the resumed stage cannot end on its best validated weights:
        say so and drop that stage's score, so selection restarts from the resumed step (rather
        than ending on the last weights while the state still names an earlier best)."""
        index = meta["stage_index"]
        stage = self.method.stages[index] if index < len(self.method.stages) else None
        scores = meta.get("best", {})
        if stage is None or scores.get(stage) is None:
            return meta
        self.console.print(
            f"[yellow]warning:[/yellow] {best} is missing, so the best {stage!r} weights validated "
            f"before the interruption (score {scores[stage]:.4g}) are lost; the stage's checkpoint "
            "is chosen among the validations from here on"
        )
        return {**meta, "best": {k: v for k, v in scores.items() if k != stage}}

    def _check_data(self, recorded: Any, path: Path) -> None:
        """A run continues on the data it was trained on (the test split's options aside)."""
        if recorded is None or self.data is None or training_data(recorded) == training_data(self.data):
            return
        raise ConfigError(
            f"{path} was trained on {describe_data(recorded)}, not on {describe_data(self.data)}; "
            "resume with the run's data options (--data/--root/--preset/--set data.*, as in its "
            "config.json) or train into a new --out"
        )

    def _check_state(self, meta: dict[str, Any], path: Path) -> None:
        """The training state `fit` continues from is one this configuration can reach: a stage
        index and a step inside the schedule, elapsed seconds, best scores per stage, history rows."""

        def damaged(what: str) -> TrainingError:
            return TrainingError(f"{path}: training state {what}; the checkpoint is damaged, train again")

        stages = self.method.stages
        index = meta.get("stage_index")
        if type(index) is not int or not 0 <= index <= len(stages):
            raise damaged(f"'stage_index' is {index!r}, not an integer in 0..{len(stages)}")
        step = meta.get("step")
        total = self._stage_length(stages[index])[2] if index < len(stages) else 0
        if type(step) is not int or not 0 <= step <= total:
            raise damaged(f"'step' is {step!r}, not an integer in 0..{total} (the length of this stage)")
        seconds = meta.get("seconds", 0.0)
        if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds < 0:
            raise damaged(f"'seconds' is {seconds!r}, not a finite number >= 0")
        best = meta.get("best", {})
        if not isinstance(best, dict):
            raise damaged(f"'best' is {type(best).__name__}, not an object of scores per stage")
        for stage, score in best.items():
            finite = type(score) in (int, float) and math.isfinite(score)
            if stage not in stages or not (score is None or finite):
                raise damaged(f"'best' holds {stage!r}: {score!r}, not a stage of {self.method.name} and its score")
        history = meta.get("history", [])
        if not isinstance(history, list):
            raise damaged(f"'history' is {type(history).__name__}, not a list of validation rows")
        for i, row in enumerate(history):
            if not isinstance(row, dict) or row.get("stage") not in stages or type(row.get("step")) is not int:
                raise damaged(f"'history' row {i} is {str(row)[:60]!r}, not a validation row with a stage and step")

    def _average(self, stage: str) -> StageAverage | None:
        decay = self.method.train_config[stage].get("ema")
        return None if decay is None else StageAverage(self.method.stage_modules(stage), float(decay))

    def _check_average(self, meta: dict[str, Any], ckpt: Any, *, source: str) -> None:
        """A mid-stage checkpoint of a stage with `ema` holds its average, and one that fits."""
        if meta["stage_index"] >= len(self.method.stages) or (meta["step"] == 0 and not ckpt.ema):
            return
        average = self._average(self.method.stages[meta["stage_index"]])
        if average is not None:
            average.load(ckpt.ema, source=source)  # a throwaway copy: a check only
        elif ckpt.ema:
            raise TrainingError(
                f"{source}: the run was trained with a weight average (train.<stage>.ema) that this "
                "configuration lacks; resume with the options the run started with"
            )

    def _resume_state(self) -> dict[str, Any] | None:
        state = self._checked if self._checked is not None else self.check_resume()
        self._checked = None
        if state is None:
            return None
        ckpt = state.pop("_ckpt")  # check_resume has loaded its weights
        restore_rng(ckpt.rng, ckpt.meta.get("rng", {}))
        self.history = list(ckpt.meta.get("history", []))
        return {**state, "ema": ckpt.ema}

    # ---- validation -----------------------------------------------------------------------
    def _validate(self, stage: str) -> dict[str, float] | None:
        """Validation of `stage` on the first `val_images` images: its loss for an earlier stage;
        for the last stage GED, HM-IoU and sample diversity of `val_samples` samples. `score`
        (lower is better) selects the best checkpoint."""
        if self.val_set is None or len(self.val_set) == 0:
            return None
        cfg = self.method.train_config[stage]
        n = min(len(self.val_set), int(cfg.get("val_images") or 8))
        batch = to_device(collate([self.val_set[i] for i in range(n)]), self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed + 12345)
            if stage != self.method.stages[-1]:
                with torch.no_grad():
                    loss = float(self.method.loss(batch, stage)["loss"])
                return {"score": loss, "val_loss": loss}
            from .metrics import ged, hm_iou, sample_diversity

            gen = torch.Generator(self.device).manual_seed(self.seed + 54321)
            samples = self.method.sample(batch["image"], int(cfg.get("val_samples") or 8), generator=gen)
            masks = batch["masks"]
            value = float(ged(samples, masks).mean())
            return {
                "score": value,
                "val_ged": value,
                "val_hm_iou": float(hm_iou(samples, masks).mean()),
                "val_diversity": float(sample_diversity(samples, masks).mean()),
            }

    # ---- main loop ------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train every stage; with `resume`, continue from `out_dir/last.safetensors` if present.

        Holds the lock of `out_dir` (`ambiseg.lock`): a second writer to it is refused.
        """
        lock_dir = self.out_dir if self.out_dir is not None and dist.is_main() else None
        if lock_dir is not None:
            ensure_dir(lock_dir)
        with run_lock(lock_dir) if lock_dir is not None else contextlib.nullcontext(), self._memory_format():
            return self._fit(resume=resume)

    @contextlib.contextmanager
    def _memory_format(self) -> Iterator[None]:
        """The method in channels-last while training when asked (see `channels_last`), then contiguous."""
        if not self.channels_last:
            yield
            return
        self.method.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            self.method.to(memory_format=torch.contiguous_format)

    def _fit(self, *, resume: bool) -> TrainResult:
        self.method.to(self.device)
        state = self._resume_state() if resume else None
        if state is None:
            seed_everything(self.seed)
        _decorrelate_ranks(self.seed, int(state["step"]) if state else 0)
        done_stages = state["stage_index"] if state else 0
        elapsed = float(state.get("seconds", 0.0)) if state else 0.0
        best: dict[str, float | None] = dict(state.get("best", {})) if state else {}
        steps_done: dict[str, int] = {}
        anomaly = torch.autograd.detect_anomaly() if self.detect_anomaly else contextlib.nullcontext()
        start = time.perf_counter()
        with anomaly, self._progress() as bar:
            for index, stage in enumerate(self.method.stages):
                if index < done_stages:
                    continue
                resumed = state if state and state["stage_index"] == index else None
                steps_done[stage] = self._fit_stage(stage, index, resumed, best, bar, elapsed, start)
                state = None
                seconds = elapsed + time.perf_counter() - start
                self._save(
                    "last.safetensors", None, stage_index=index + 1, stage=stage, step=0, best=best, seconds=seconds
                )
        self.method.eval()
        return TrainResult(
            seconds=seconds if steps_done else elapsed, steps=steps_done, best=best, history=self.history
        )

    def _fit_stage(
        self,
        stage: str,
        index: int,
        resumed: dict[str, Any] | None,
        best: dict[str, float | None],
        bar: Progress | None,
        elapsed: float,
        start: float,
    ) -> int:
        cfg = self.method.train_config[stage]
        bs, per_epoch, total = self._stage_length(stage)
        params = self.method.begin_stage(stage)
        optimizer = make_optimizer(cfg, params)
        step = 0
        average = self._average(stage)
        if resumed is not None:
            step = int(resumed["step"])
            if resumed.get("optimizer_state"):
                optimizer.load_state_dict(resumed["optimizer_state"])
            if average is not None and resumed.get("ema"):
                average.load(resumed["ema"], source="last.safetensors")
        clip = cfg.get("grad_clip")
        accumulate = max(1, int(cfg.get("accumulate") or 1))
        if bs < dist.world_size():
            raise ConfigError(f"train.{stage}.batch_size ({bs}) is smaller than the world size ({dist.world_size()})")
        loss_fn: torch.nn.Module = _StageLoss(self.method, stage)
        if dist.is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            loss_fn = DistributedDataParallel(loss_fn, device_ids=ids, find_unused_parameters=True)
        task = (
            bar.add_task(f"{self.method.name}:{stage}", total=total, completed=step, loss=float("nan"), rate="")
            if bar
            else None
        )
        t0, s0 = time.perf_counter(), step
        while step < total:
            epoch, offset = divmod(step, per_epoch)
            for idx in self._epoch_batches(stage, epoch, bs)[offset:]:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step, total)
                loss = self._step(loss_fn, optimizer, params, dist.shard(idx), accumulate, clip, stage, epoch, step)
                if average is not None:
                    average.update()
                step += 1
                every = cfg.get("val_every")
                end_of_epoch = (step % every == 0 if every else step % per_epoch == 0) or step == total
                if bar is not None and task is not None:
                    rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=step, loss=loss, rate=f"{rate:.1f} it/s")
                if end_of_epoch:
                    with average.applied() if average is not None else contextlib.nullcontext():
                        self._end_epoch(stage, epoch, step, loss, best, lr=optimizer.param_groups[0]["lr"])
                if end_of_epoch or step % self.save_every == 0:
                    self._save(
                        "last.safetensors",
                        optimizer,
                        stage_index=index,
                        stage=stage,
                        step=step,
                        epoch=step // per_epoch,
                        best=best,
                        seconds=elapsed + time.perf_counter() - start,
                        ema=average.state() if average is not None else None,
                    )
                if step >= total:
                    break
        if average is not None:
            average.apply()  # the stage ends on its average (or on the best validated one, below)
        dist.barrier()  # rank 0 has written best.safetensors
        if self.out_dir is not None and (self.out_dir / "best.safetensors").exists() and best.get(stage) is not None:
            ckpt = load_checkpoint(self.out_dir / "best.safetensors", method=self.method.name)
            if ckpt.meta.get("stage") == stage:
                load_weights(self.method, ckpt, source="best checkpoint")
        return step

    def _step(
        self,
        loss_fn: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        mine: list[int],
        accumulate: int,
        clip: Any,
        stage: str,
        epoch: int,
        step: int,
    ) -> float:
        """One optimiser step on this rank's share `mine` of the global batch; returns the global mean loss."""
        optimizer.zero_grad(set_to_none=True)
        size = max(1, math.ceil(len(mine) / accumulate))
        micro = [mine[i : i + size] for i in range(0, len(mine), size)]
        total = torch.zeros((), device=self.device)
        for j, part in enumerate(micro):
            batch = to_device(collate([self.train_set[i] for i in part]), self.device)
            sync = (
                contextlib.nullcontext()
                if j == len(micro) - 1 or not isinstance(loss_fn, torch.nn.parallel.DistributedDataParallel)
                else loss_fn.no_sync()
            )
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    loss = loss_fn(batch)["loss"] * (len(part) / len(mine))
                loss.backward()
            total += loss.detach().float()
        if dist.is_distributed():
            torch.distributed.all_reduce(total)
            total /= dist.world_size()
        if not torch.isfinite(total):
            raise TrainingError(
                f"non-finite loss ({total.item()}) in stage '{stage}', epoch {epoch}, step {step}; "
                "the last good checkpoint is kept; lower the learning rate or run with --detect-anomaly"
            )
        if clip:
            torch.nn.utils.clip_grad_norm_(params, float(clip))
        optimizer.step()
        return total.item()

    def _end_epoch(
        self, stage: str, epoch: int, step: int, loss: float, best: dict[str, float | None], *, lr: float
    ) -> None:
        scores = self._validate(stage)
        score = None if scores is None else scores.pop("score")
        self.history.append(
            {"stage": stage, "epoch": epoch, "step": step, "loss": loss, "lr": lr, "val": score, **(scores or {})}
        )
        self._write_log()
        if score is None:
            return
        previous = best.get(stage)
        later_wins = self.method.train_config[stage].get("select") == "last-best"
        if previous is None or score < previous or (later_wins and score == previous):
            best[stage] = score
            self._save(
                "best.safetensors",
                None,
                stage_index=self.method.stages.index(stage),
                stage=stage,
                step=step,
                best=best,
                rng=False,
            )

    def _write_log(self) -> None:
        """The history so far as CSV (one row per validation), rewritten atomically."""
        if self.log is None or not dist.is_main():
            return
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        lines = [",".join(keys)] + [
            ",".join("" if row.get(k) is None else str(row.get(k)) for k in keys) for row in self.history
        ]
        write_text(self.log, "\n".join(lines) + "\n")

    @contextlib.contextmanager
    def _progress(self) -> Iterator[Progress | None]:
        if not self.progress or not dist.is_main():
            yield None
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        with bar:
            yield bar
