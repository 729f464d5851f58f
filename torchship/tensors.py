"""A model's inputs and outputs as plain data: names, dtypes and named axes.

The lowest layer: the manifest stores these, every family's spec produces them, and every
predictor checks its feeds against them.
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH, SEQUENCE = "batch", "sequence"
PAST_SEQUENCE, TOTAL_SEQUENCE = "past_sequence", "total_sequence"
EMPTY_OK_AXES = frozenset({PAST_SEQUENCE})  # an empty past is how a decoder's first step runs


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    axes: tuple[str | int, ...]  # str = named dynamic axis, int = fixed size

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.axes)}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["shape"]))

    def dynamic_axes(self) -> dict[int, str]:
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)
