"""Optimizations of an exported folder: ORT graph levels and the transformer fusion optimizer."""

from torchship.optimizers.optimize import OptimizeOptions, optimize

__all__ = ["OptimizeOptions", "optimize"]
