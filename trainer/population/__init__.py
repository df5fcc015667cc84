"""The fused population engine: K runs of one model and dataset trained in lockstep as stacked tensors."""

from trainer.population.engine import MemberResult, train_population
from trainer.population.optim import StackedOptimizer
from trainer.population.plan import fusable, plan_groups, why_not_fusable

__all__ = ["MemberResult", "StackedOptimizer", "fusable", "plan_groups", "train_population", "why_not_fusable"]
