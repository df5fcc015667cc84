"""Train K runs in lockstep as one stacked population, each member equal to its own trainer.train run."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.config import RunConfig
from trainer.data import Dataset, load_dataset
from trainer.divergence import DivergenceTracker, chance_of
from trainer.loop import Checkpoint, EpochPoint, resolve_device
from trainer.models import build_model, count_parameters
from trainer.optim import build_optimizer
from trainer.population import memory
from trainer.population.functional import stack_models
from trainer.population.optim import StackedOptimizer
from trainer.population.plan import plan_groups, why_not_fusable
from trainer.schedules import lr_at, validate_schedule

logger = logging.getLogger(__name__)

EVAL_BATCH = 1024  # as trainer.loop.evaluate, so val sums are reduced over the same chunks


@dataclass
class MemberResult:
    status: str  # "succeeded" | "diverged" | "stopped", as TrainResult
    points: list[EpochPoint]  # a point's `seconds` is its group's epoch: the members share the wall time
    diverged_at: int | None
    reason: str | None
    early_stopped: bool
    n_parameters: int


@dataclass
class _Member:
    """Host-side bookkeeping of one member while it is in a group."""

    index: int  # position in train_population's configs
    config: RunConfig
    order: torch.Generator  # draws the member's per-epoch permutation, as trainer.loop's `order`
    tracker: DivergenceTracker | None
    points: list[EpochPoint] = field(default_factory=list)
    best_val_loss: float = math.inf
    stale_epochs: int = 0
    reason: str | None = None  # set when it diverges; it is then frozen for the rest of the epoch
    start: Checkpoint | None = None  # where it resumes (trainer.train's checkpoint format)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build members under `dtype` so their init draws match a reference run under set_default_dtype(dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def train_population(
    configs: Sequence[RunConfig],
    *,
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    on_epoch: Callable[[int, EpochPoint], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    dtype: torch.dtype = torch.float32,
    starts: Sequence[Checkpoint | None] | None = None,
    on_checkpoint: Callable[[int, Checkpoint], None] | None = None,
    checkpoint_due: Callable[[int, int], bool] | None = None,
    memory_budget: int | None | Literal["auto"] = "auto",
) -> list[MemberResult]:
    """Train every config as a member of one population; result k is what trainer.train(configs[k]) returns.

    Members are split by plan_groups; each group trains as stacked tensors, one group after another.
    on_epoch(k, point) and should_stop(k) take the member's index in `configs`; should_stop is asked
    after each epoch but the last, as trainer.train asks. With dtype=torch.float64 the members match
    trainer.train run under torch.set_default_dtype(torch.float64) on float64 data.

    Checkpoints are trainer.train's: starts[k] resumes member k (from trainer.train, or from this engine),
    and on_checkpoint(k, checkpoint) receives one wherever checkpoint_due(k, epoch) says so, at the same
    point of the epoch as trainer.train builds its own; trainer.train can resume from it, and so can this
    engine. Members resuming from different epochs train in different groups.

    memory_budget (bytes) bounds a group: members are estimated (trainer.population.memory) and a group
    that would not fit is trained in chunks, one after another. "auto": a share of the device's free
    memory (the GPU's, or the machine's for a CPU); None: no bound.
    """
    reason = why_not_fusable(configs)
    if reason is not None:
        raise ValueError(f"Runs cannot train as one population: {reason}")
    if not dtype.is_floating_point:
        raise ValueError(f"Invalid dtype: {dtype} (need a floating point type)")
    device = resolve_device(device) if isinstance(device, str) else device
    for config in configs:  # every bad value surfaces now, before any member trains
        validate_schedule(config.schedule, config.optimizer.lr, config.epochs)
        build_optimizer([torch.zeros(1)], config.optimizer)

    starts = list(starts) if starts is not None else [None] * len(configs)
    if len(starts) != len(configs):
        raise ValueError(f"{len(starts)} starts for {len(configs)} configs")
    for config, start in zip(configs, starts, strict=True):
        if start is not None and not 0 <= start.epoch <= config.epochs:
            raise ValueError(f"Invalid checkpoint epoch: {start.epoch} (run has {config.epochs} epochs)")

    results: dict[int, MemberResult] = {}
    for planned in plan_groups(configs):
        by_epoch: dict[int, list[int]] = {}  # one step count per group: members resuming together
        for i in planned:
            start = starts[i]
            by_epoch.setdefault(start.epoch if start is not None else 0, []).append(i)
        for together in by_epoch.values():
            for group in _fit(together, configs, device, data_root, dtype, memory_budget):
                members = [_member(i, configs[i], starts[i]) for i in group]
                run = _GroupRun(members, device, data_root, dtype)
                results.update(run.run(on_epoch, should_stop, on_checkpoint, checkpoint_due))
    return [results[i] for i in range(len(configs))]


def _fit(
    group: list[int],
    configs: Sequence[RunConfig],
    device: torch.device,
    data_root: Path | None,
    dtype: torch.dtype,
    budget: int | None | Literal["auto"],
) -> list[list[int]]:
    """The group in chunks whose members' estimated memory fits the budget together."""
    if budget == "auto":
        budget = memory.budget_bytes(device)
    if budget is None or len(group) < 2:
        return [group]
    first = configs[group[0]]
    data = load_dataset(first.dataset, first.data_seed, data_root)
    with _default_dtype(dtype):
        model = build_model(first.model, data.input_shape, data.n_classes)
    samples = (len(data.y_train) + len(data.y_val)) * int(torch.Size(data.input_shape).numel())
    # a group shares its optimizer kind and batch size (plan_groups): one member's estimate is everyone's
    per_member = memory.member_bytes(first, model, data.input_shape, dtype)
    per_member += samples * torch.empty((), dtype=dtype).element_size()  # at worst a split of its own
    chunks = memory.split(group, per_member, budget)
    if len(chunks) > 1:
        logger.info(
            "population of %d members in %d groups: ~%.1f MiB each, budget %.1f MiB",
            len(group),
            len(chunks),
            per_member / 2**20,
            budget / 2**20,
        )
    return chunks


def _member(index: int, config: RunConfig, start: Checkpoint | None) -> _Member:
    member = _Member(index, config, torch.Generator().manual_seed(config.seed), None, start=start)
    if config.divergence.enabled:
        member.tracker = DivergenceTracker(config.divergence.factor, config.divergence.smoothing)
    if start is not None:
        member.order.set_state(start.data_generator_state)
        if member.tracker is not None:
            for key, value in start.divergence_state.items():
                setattr(member.tracker, key, value)
        member.best_val_loss, member.stale_epochs = start.best_val_loss, start.epochs_without_improvement
        member.points = [EpochPoint(**p) for p in start.points]
    return member


class _GroupRun:
    """Members with one optimizer structure and batch size, stacked along dim 0 (K) and stepped together."""

    def __init__(
        self, members: list[_Member], device: torch.device, data_root: Path | None, dtype: torch.dtype
    ) -> None:
        self.members = members
        self.device = device
        self.batch_size = members[0].config.batch_size
        first = members[0].config

        # data: one split per distinct seed (the split and its standardisation depend on the seed);
        # members index their own seed's slot in the flattened (S * N, ...) tensors
        seeds = sorted({m.config.data_seed for m in members})
        splits: list[Dataset] = [load_dataset(first.dataset, seed, data_root) for seed in seeds]
        self.n_train, self.n_val = len(splits[0].y_train), len(splits[0].y_val)
        self.x_train = torch.cat([d.x_train for d in splits]).to(device, dtype)  # (S * N, *input_shape)
        self.y_train = torch.cat([d.y_train for d in splits]).to(device)  # (S * N,)
        self.x_val = torch.cat([d.x_val for d in splits]).to(device, dtype)  # (S * N_val, *input_shape)
        self.y_val = torch.cat([d.y_val for d in splits]).to(device)  # (S * N_val,)
        self.slot = torch.tensor([seeds.index(m.config.data_seed) for m in members], device=device)  # (K,)
        for m in members:  # the collapse rule scores each member against chance on its own split
            if m.tracker is not None:
                split = splits[seeds.index(m.config.data_seed)]
                m.tracker.chance = chance_of(split.y_train, split.n_classes)
                m.tracker.replay(m.points)

        # models: member k's initial weights are what trainer.train builds after manual_seed(seed_k)
        models = []
        with _default_dtype(dtype):
            for m in members:
                torch.manual_seed(m.config.seed)
                model = build_model(m.config.model, splits[0].input_shape, splits[0].n_classes)
                if m.start is not None:
                    model.load_state_dict(m.start.model_state)
                models.append(model)
        self.n_parameters = count_parameters(models[0])
        self.params = stack_models(models, device)  # flat (K, P); BatchNorm buffers stacked beside it
        self.optimizer = StackedOptimizer(self.params.flat, [m.config.optimizer for m in members])
        self.epoch = members[0].start.epoch if members[0].start is not None else 0
        if members[0].start is not None:
            self.optimizer.step_count = int(members[0].start.optimizer_state["state"][0]["step"])
            for row, m in enumerate(members):
                assert m.start is not None
                self.optimizer.load_member_state_dict(row, m.start.optimizer_state, self.params.join_row)

    def run(
        self,
        on_epoch: Callable[[int, EpochPoint], None] | None,
        should_stop: Callable[[int], bool] | None,
        on_checkpoint: Callable[[int, Checkpoint], None] | None = None,
        checkpoint_due: Callable[[int, int], bool] | None = None,
    ) -> dict[int, MemberResult]:
        results: dict[int, MemberResult] = {}
        epoch = self.epoch
        done = [row for row, m in enumerate(self.members) if self._ended_before(m, epoch)]
        for row in done:
            m = self.members[row]
            results[m.index] = MemberResult("succeeded", m.points, None, None, True, self.n_parameters)
        if done:
            self._keep([row for row in range(len(self.members)) if row not in done])
        while self.members:
            epoch += 1
            t_epoch = time.perf_counter()
            lrs = [lr_at(m.config.schedule, m.config.optimizer.lr, epoch, m.config.epochs) for m in self.members]
            self.optimizer.set_hyperparameter("lr", lrs)
            train_sums, train_correct, seen = self._train_epoch()
            val_sums, val_correct = self._evaluate()
            seconds = time.perf_counter() - t_epoch

            keep: list[int] = []
            for row, m in enumerate(self.members):
                point = EpochPoint(
                    epoch,
                    train_sums[row] / seen[row],
                    train_correct[row] / seen[row],
                    val_sums[row] / self.n_val,
                    val_correct[row] / self.n_val,
                    lrs[row],
                    seconds,
                )
                m.points.append(point)
                if on_epoch is not None:
                    on_epoch(m.index, point)

                save = functools.partial(self._save, row, epoch, on_checkpoint, checkpoint_due)
                result = self._finish(m, epoch, point, should_stop, save)
                if result is None:
                    keep.append(row)
                else:
                    results[m.index] = result
            logger.info(
                "population epoch %d: %d members, %d go on (%.2fs)", epoch, len(self.members), len(keep), seconds
            )
            if len(keep) < len(self.members):
                self._keep(keep)
        return results

    @staticmethod
    def _ended_before(m: _Member, epoch: int) -> bool:
        """A member resumed from a checkpoint of a run that had early-stopped already (as trainer.train checks)."""
        return m.config.patience is not None and m.stale_epochs >= m.config.patience and epoch > 0

    def _save(
        self,
        row: int,
        epoch: int,
        on_checkpoint: Callable[[int, Checkpoint], None] | None,
        checkpoint_due: Callable[[int, int], bool] | None,
    ) -> None:
        index = self.members[row].index
        if on_checkpoint is not None and (checkpoint_due is None or checkpoint_due(index, epoch)):
            on_checkpoint(index, self.checkpoint(row, epoch))

    def checkpoint(self, row: int, epoch: int) -> Checkpoint:
        """Member `row` after `epoch`, as trainer.train's Checkpoint (copies: safe to keep while training goes on)."""
        m = self.members[row]
        return Checkpoint(
            epoch=epoch,
            model_state=self.params.member_state(row),
            optimizer_state=self.optimizer.member_state_dict(row, self.params.split_row, len(self.params.shapes)),
            data_generator_state=m.order.get_state(),
            torch_rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            divergence_state=m.tracker.state() if m.tracker is not None else {},
            best_val_loss=m.best_val_loss,
            epochs_without_improvement=m.stale_epochs,
            points=[asdict(p) for p in m.points],
        )

    def _finish(
        self,
        m: _Member,
        epoch: int,
        point: EpochPoint,
        should_stop: Callable[[int], bool] | None,
        save: Callable[[], None],
    ) -> MemberResult | None:
        """The member's result if this epoch ended it, else None; the same order of checks as trainer.train."""
        config = m.config
        logger.debug("member %d epoch %d: %s", m.index, epoch, point)
        if m.reason is None and m.tracker is not None:
            m.reason = m.tracker.end_epoch(point.val_loss, point.val_accuracy)
        if m.reason is not None:
            logger.warning("member %d diverged in epoch %d: %s", m.index, epoch, m.reason)
            return MemberResult("diverged", m.points, epoch, m.reason, False, self.n_parameters)
        if point.val_loss < m.best_val_loss:  # a NaN val_loss never counts as an improvement
            m.best_val_loss, m.stale_epochs = point.val_loss, 0
        else:
            m.stale_epochs += 1
        save()
        if config.patience is not None and m.stale_epochs >= config.patience:
            logger.info("member %d: early stop after epoch %d", m.index, epoch)
            return MemberResult("succeeded", m.points, None, None, True, self.n_parameters)
        if epoch >= config.epochs:
            return MemberResult("succeeded", m.points, None, None, False, self.n_parameters)
        if should_stop is not None and should_stop(m.index):
            logger.info("member %d stopped on request after epoch %d", m.index, epoch)
            return MemberResult("stopped", m.points, None, None, False, self.n_parameters)
        return None

    def _train_epoch(self) -> tuple[list[float], list[int], list[int]]:
        """One epoch of every member on its own permutation; (loss sums, correct counts, samples seen)."""
        k, n, device = len(self.members), self.n_train, self.device
        perms = torch.stack([torch.randperm(n, generator=m.order) for m in self.members]).to(device)  # (K, N)
        perms += self.slot.unsqueeze(1) * n  # rows of the member's own split in the flattened x_train
        loss_sums = torch.zeros(k, dtype=torch.float64, device=device)
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        seen = 0  # samples per live member so far
        frozen_seen: dict[int, int] = {}  # row -> samples it saw, for members that diverged this epoch
        live = [True] * k  # False once a member diverged: its curve and weights stop for the epoch
        live_mask = torch.ones(k, dtype=torch.bool, device=device)  # (K,)
        rows: Tensor | None = None  # the live rows, once some are not
        tracked = any(m.tracker is not None for m in self.members)
        for i in range(0, n, self.batch_size):
            idx = perms[:, i : i + self.batch_size]  # (K, B)
            xb, yb = self.x_train[idx], self.y_train[idx]  # (K, B, *input_shape), (K, B)
            logits = self.params.forward(xb, rows=rows)  # (K, B, C); a frozen member's BatchNorm buffers stay
            b = idx.shape[1]
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(k, b).mean(1)  # (K,)
            loss_sums += torch.where(live_mask, losses.detach().double() * b, 0.0)
            correct += torch.where(live_mask, (logits.argmax(dim=2) == yb).sum(1), 0)
            seen += b
            if tracked:
                # one host sync per step for the whole population, where K separate runs sync K times;
                # the trackers see the same float losses trainer.train's loss.item() gives them
                values = losses.detach().tolist()
                for row, m in enumerate(self.members):
                    if live[row] and m.tracker is not None:
                        m.reason = m.tracker.update(values[row])
                        if m.reason is not None:  # no update from a diverged loss, and none after it
                            live[row], frozen_seen[row] = False, seen
                            live_mask[row] = False
                            rows = torch.tensor([r for r in range(k) if live[r]], dtype=torch.long, device=device)
                if not any(live):
                    break
            # members are independent, so the gradient of the sum is each member's own gradient
            # (a frozen member's NaN stays in its own rows of the batched matmuls)
            self.optimizer.step(self.params.flat, self.params.grad(losses.sum()), rows)
        return loss_sums.tolist(), correct.tolist(), [frozen_seen.get(row, seen) for row in range(k)]

    @torch.no_grad()
    def _evaluate(self) -> tuple[list[float], list[int]]:
        """Each member's cross-entropy sum and correct count over its own validation split."""
        k, n = len(self.members), self.n_val
        loss_sums = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.int64, device=self.device)
        base = self.slot.unsqueeze(1) * n  # (K, 1)
        for i in range(0, n, EVAL_BATCH):
            idx = base + torch.arange(i, min(i + EVAL_BATCH, n), device=self.device)  # (K, B)
            xb, yb = self.x_val[idx], self.y_val[idx]
            logits = self.params.forward(xb, train=False)  # (K, B, C), BatchNorm on its running statistics
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape)
            loss_sums += losses.sum(1).double()
            correct += (logits.argmax(dim=2) == yb).sum(1)
        return loss_sums.tolist(), correct.tolist()

    def _keep(self, keep: list[int]) -> None:
        """Drop finished members from the stack, so later epochs compute only the ones still training."""
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.members = [self.members[r] for r in keep]
        self.slot = self.slot[rows]
        self.params.keep(rows)
        self.optimizer.keep(rows)
