"""The fused population engine: K runs of one model and dataset trained in lockstep as stacked tensors."""

# MLPs stack as batched matmuls (stack.py), cnn and resnet as grouped convolutions with each member's
# BatchNorm statistics apart (functional.py). why_not_fusable() refuses dropout (each run's masks come from
# its own global random stream): those runs train through trainer.train one by one.
from trainer.population.engine import train_population
from trainer.population.optim import StackedOptimizer
from trainer.population.plan import fusable, plan_groups, why_not_fusable

__all__ = ["StackedOptimizer", "fusable", "plan_groups", "train_population", "why_not_fusable"]
