"""Output comparison as a pure function over plain arrays.

Every output of every case is compared and kept, so a failure reports all mismatches with their
numbers, not just the first one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class OutputComparison:
    case: str
    output: str
    expected_shape: tuple[int, ...]
    actual_shape: tuple[int, ...] | None
    max_abs: float | None
    mean_abs: float | None
    cosine: float | None  # cosine of the flattened tensors
    atol: float
    problem: str | None  # None when the output matches

    @property
    def ok(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        where = f"{self.output} @ {self.case}" if self.case else self.output
        if self.max_abs is None:
            return f"{where}: {self.problem}"
        verdict = "ok" if self.ok else "MISMATCH"
        return (f"{where}: max abs {self.max_abs:.3g} (atol {self.atol:g}), "
                f"mean abs {self.mean_abs:.3g}, cosine {self.cosine:.6f} {verdict}")


@dataclass(frozen=True)
class ComparisonReport:
    items: tuple[OutputComparison, ...]

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.items)

    @property
    def failures(self) -> tuple[OutputComparison, ...]:
        return tuple(i for i in self.items if not i.ok)

    @property
    def max_abs(self) -> float:
        vals = [i.max_abs for i in self.items if i.max_abs is not None]
        return max(vals) if vals else float("nan")

    @property
    def min_cosine(self) -> float:
        vals = [i.cosine for i in self.items if i.cosine is not None]
        return min(vals) if vals else float("nan")

    def to_json(self) -> dict:
        return {
            "passed": self.ok,
            "max_abs": self.max_abs,
            "min_cosine": self.min_cosine,
            "outputs": [
                {**asdict(i), "expected_shape": list(i.expected_shape),
                 "actual_shape": None if i.actual_shape is None else list(i.actual_shape)}
                for i in self.items
            ],
        }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / denom)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per vector along the last axis (per token for hidden states, per sentence for embeddings)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, b.shape[-1])
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.where(denom > 0, dots / np.where(denom > 0, denom, 1.0), 1.0)


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], *,
                    atol: float, case: str = "", where: dict[str, np.ndarray] | None = None) -> list[OutputComparison]:
    """Compare by name, then shape, then values; missing and extra outputs are problems too.

    ``where`` optionally gives, per output, a boolean array broadcastable to it: values are compared
    only where it is true (e.g. a decoder's real tokens; padded positions of a causal model attend
    to nothing and their values mean nothing).
    """
    where = where or {}
    items: list[OutputComparison] = []
    for name, ref in expected.items():
        ref = np.asarray(ref)
        if name not in actual:
            items.append(OutputComparison(case, name, ref.shape, None, None, None, None, atol,
                                          "output missing"))
            continue
        got = np.asarray(actual[name])
        if got.shape != ref.shape:
            items.append(OutputComparison(case, name, ref.shape, got.shape, None, None, None, atol,
                                          f"shape {list(got.shape)}, expected {list(ref.shape)}"))
            continue
        if name in where:
            keep = np.broadcast_to(where[name], ref.shape)
            ref, got = ref[keep], got[keep]
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        finite = bool(np.isfinite(got).all())
        max_abs = float(diff.max()) if diff.size else 0.0
        problem = None
        if not finite:
            problem = "output has NaN or inf"
        elif max_abs > atol:
            problem = f"max abs {max_abs:.3g} > atol {atol:g}"
        items.append(OutputComparison(case, name, np.shape(expected[name]), np.shape(actual[name]), max_abs,
                                      float(diff.mean()) if diff.size else 0.0,
                                      cosine(ref, got), atol, problem))
    for name in actual:
        if name not in expected:
            got = np.asarray(actual[name])
            items.append(OutputComparison(case, name, (), got.shape, None, None, None, atol,
                                          "unexpected output"))
    return items
