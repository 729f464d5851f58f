"""Optimizations of an exported folder: ORT graph levels, transformer fusion, fp16, int8."""

from torchship.optimizers.optimize import OptimizeOptions, optimize
from torchship.optimizers.quantize import QuantizeOptions, quantize

__all__ = ["OptimizeOptions", "QuantizeOptions", "optimize", "quantize"]
