"""Train K runs in lockstep as one stacked population, each member equal to its own trainer.train run."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.checkpoint import Checkpoint
from trainer.config import RunConfig
from trainer.data import Dataset, load_dataset
from trainer.divergence import chance_of
from trainer.epochs import Ending, EpochPoint, EpochRules, TrainResult
from trainer.models import build_model, count_parameters
from trainer.optimizers import declaration_of
from trainer.population import memory
from trainer.population.functional import stack_models
from trainer.population.optim import StackedOptimizer
from trainer.population.plan import plan_groups, why_not_fusable
from trainer.schedules import lr_at, validate_schedule
from trainer.setup import data_order, initial_model, resolve_device

logger = logging.getLogger(__name__)

EVAL_BATCH = 1024  # as trainer.loop.evaluate, so val sums are reduced over the same chunks


@dataclass
class _Member:
    """Host-side bookkeeping of one member while it is in a group."""

    index: int  # position in train_population's configs
    config: RunConfig
    order: torch.Generator  # draws the member's per-epoch permutation, as trainer.train's
    rules: EpochRules  # its curve so far and the rules that end it, as trainer.train's
    start: Checkpoint | None  # where it resumes (trainer.train's checkpoint format)


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
) -> list[TrainResult]:
    """Train every config as a member of one population; result k is what trainer.train(configs[k]) returns
    (but for `seconds`, from this call's start to the member's end).

    Members are split by plan_groups; each group trains as stacked tensors, one group after another.
    on_epoch(k, point) and should_stop(k) take the member's index in `configs`; should_stop is asked
    after each epoch but the last, as trainer.train asks, and only once every member of the group has had
    its on_epoch for that epoch (so a caller can judge them together). With dtype=torch.float64 the members match
    trainer.train run under torch.set_default_dtype(torch.float64) on float64 data.

    Checkpoints are trainer.train's: starts[k] resumes member k (from trainer.train, or from this engine),
    and on_checkpoint(k, checkpoint) receives one wherever checkpoint_due(k, epoch) says so, at the same
    point of the epoch as trainer.train builds its own; trainer.train can resume from it, and so can this
    engine. Members resuming from different epochs train in different groups.

    memory_budget (bytes) bounds a group: members are estimated (trainer.population.memory) and a group
    that would not fit is trained in chunks, one after another. "auto": a share of the device's free
    memory (the GPU's, or the machine's for a CPU); None: no bound.
    """
    reason = why_not_fusable(configs, try_stacking=True, data_root=data_root)
    if reason is not None:
        raise ValueError(f"Runs cannot train as one population: {reason}")
    if not dtype.is_floating_point:
        raise ValueError(f"Invalid dtype: {dtype} (need a floating point type)")
    t_call = time.perf_counter()
    device = resolve_device(device) if isinstance(device, str) else device
    for config in configs:  # every bad value surfaces now, before any member trains
        validate_schedule(config.schedule, config.optimizer.lr, config.epochs)
        declaration_of(config.optimizer.name).resolve(config.optimizer.lr, config.optimizer.params)

    starts = list(starts) if starts is not None else [None] * len(configs)
    if len(starts) != len(configs):
        raise ValueError(f"{len(starts)} starts for {len(configs)} configs")
    for config, start in zip(configs, starts, strict=True):
        if start is not None and not 0 <= start.epoch <= config.epochs:
            raise ValueError(f"Invalid checkpoint epoch: {start.epoch} (run has {config.epochs} epochs)")

    results: dict[int, TrainResult] = {}
    for planned in plan_groups(configs):
        by_epoch: dict[int, list[int]] = {}  # one step count per group: members resuming together
        for i in planned:
            start = starts[i]
            by_epoch.setdefault(start.epoch if start is not None else 0, []).append(i)
        for together in by_epoch.values():
            for group in _fit(together, configs, device, data_root, dtype, memory_budget):
                run = _GroupRun([(i, configs[i], starts[i]) for i in group], device, data_root, dtype, t_call)
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


class _GroupRun:
    """Members with one optimizer structure and batch size, stacked along dim 0 (K) and stepped together."""

    def __init__(
        self,
        members: list[tuple[int, RunConfig, Checkpoint | None]],  # (index in configs, config, start)
        device: torch.device,
        data_root: Path | None,
        dtype: torch.dtype,
        t_call: float,
    ) -> None:
        self.device, self.t_call = device, t_call
        first = members[0][1]
        self.batch_size = first.batch_size

        # data: one split per distinct seed (the split and its standardisation depend on the seed);
        # members index their own seed's slot in the flattened (S * N, ...) tensors
        seeds = sorted({config.data_seed for _, config, _ in members})
        splits: list[Dataset] = [load_dataset(first.dataset, seed, data_root) for seed in seeds]
        self.n_train, self.n_val = len(splits[0].y_train), len(splits[0].y_val)
        self.x_train = torch.cat([d.x_train for d in splits]).to(device, dtype)  # (S * N, *input_shape)
        self.y_train = torch.cat([d.y_train for d in splits]).to(device)  # (S * N,)
        self.x_val = torch.cat([d.x_val for d in splits]).to(device, dtype)  # (S * N_val, *input_shape)
        self.y_val = torch.cat([d.y_val for d in splits]).to(device)  # (S * N_val,)
        self.slot = torch.tensor([seeds.index(c.data_seed) for _, c, _ in members], device=device)  # (K,)
        self.members = []
        for index, config, start in members:  # the collapse rule scores each member against chance on its split
            split = splits[seeds.index(config.data_seed)]
            rules = EpochRules.start(config, chance_of(split.y_train, split.n_classes), start, f"member {index}")
            self.members.append(_Member(index, config, data_order(config, start), rules, start))

        # models: member k's initial weights are what trainer.train builds from seed_k
        models = []
        with _default_dtype(dtype):
            for m in self.members:
                model = initial_model(m.config, splits[0].input_shape, splits[0].n_classes)
                if m.start is not None:
                    model.load_state_dict(m.start.model_state)
                models.append(model)
        self.n_parameters = count_parameters(models[0])
        self.params = stack_models(models, device)  # flat (K, P); BatchNorm buffers stacked beside it
        self.optimizer = StackedOptimizer(self.params.flat, [m.config.optimizer for m in self.members])
        start = self.members[0].start
        self.epoch = start.epoch if start is not None else 0
        if start is not None:
            self.optimizer.step_count = int(start.optimizer_state["state"][0]["step"])
            for row, m in enumerate(self.members):
                assert m.start is not None
                self.optimizer.load_member_state_dict(row, m.start.optimizer_state, self.params.join_row)

    def run(
        self,
        on_epoch: Callable[[int, EpochPoint], None] | None,
        should_stop: Callable[[int], bool] | None,
        on_checkpoint: Callable[[int, Checkpoint], None] | None = None,
        checkpoint_due: Callable[[int, int], bool] | None = None,
    ) -> dict[int, TrainResult]:
        results: dict[int, TrainResult] = {}
        epoch = self.epoch
        done = [row for row, m in enumerate(self.members) if m.rules.stopped_before()]  # it had stopped early
        for row in done:
            results[self.members[row].index] = self._result(row, "early_stopped")
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

            # every member's point is reported before any member is asked to stop: a caller can judge the
            # members that reached this epoch together (as successive halving does)
            points = []
            for row, m in enumerate(self.members):
                train_loss, train_accuracy = train_sums[row] / seen[row], train_correct[row] / seen[row]
                val_loss, val_accuracy = val_sums[row] / self.n_val, val_correct[row] / self.n_val
                points.append(EpochPoint(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lrs[row], seconds))
                if on_epoch is not None:
                    on_epoch(m.index, points[-1])
            keep: list[int] = []
            for row, (m, point) in enumerate(zip(self.members, points, strict=True)):
                save = functools.partial(self._save, row, on_checkpoint, checkpoint_due)
                stop = functools.partial(should_stop, m.index) if should_stop is not None else None
                ending = m.rules.end_epoch(point, save, stop)
                if ending is None:
                    keep.append(row)
                else:
                    results[m.index] = self._result(row, ending)
            logger.info(
                "population epoch %d: %d members, %d go on (%.2fs)", epoch, len(self.members), len(keep), seconds
            )
            if len(keep) < len(self.members):
                self._keep(keep)
        return results

    def _result(self, row: int, ending: Ending) -> TrainResult:
        elapsed = time.perf_counter() - self.t_call
        return self.members[row].rules.result(ending, elapsed, self.n_parameters, self.device)

    def _save(
        self,
        row: int,
        on_checkpoint: Callable[[int, Checkpoint], None] | None,
        checkpoint_due: Callable[[int, int], bool] | None,
    ) -> None:
        m = self.members[row]
        if on_checkpoint is not None and (checkpoint_due is None or checkpoint_due(m.index, m.rules.points[-1].epoch)):
            on_checkpoint(m.index, self.checkpoint(row))

    def checkpoint(self, row: int) -> Checkpoint:
        """Member `row` after its last epoch as trainer.train's Checkpoint (copies: safe to keep while it trains)."""
        m = self.members[row]
        optimizer_state = self.optimizer.member_state_dict(row, self.params.split_row, len(self.params.shapes))
        return m.rules.checkpoint(self.params.member_state(row), optimizer_state, m.order, self.device)

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
        tracked = any(m.rules.watches_steps for m in self.members)
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
                    if live[row] and m.rules.watches_steps and m.rules.step(values[row]):
                        # no update from a diverged loss, and none after it
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
