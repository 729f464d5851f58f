"""Validate an ONNX model against the eager PyTorch outputs stored with the export.

Order of checks, as every export and optimization ends: output names, then shapes along the
dynamic axes, then values; every case runs at a shape other than the export's dummy shape.
"""

from __future__ import annotations

from pathlib import Path

from torchship._ort import ort_runner
from torchship.artifact import ReferenceCase
from torchship.compare import ComparisonReport, compare_outputs
from torchship.errors import TorchshipError, ValidationError, root_cause


def run_reference_cases(path: Path, cases: list[ReferenceCase], *, atol: float, spec=None,
                        threads: int | None = None) -> ComparisonReport:
    """Run every case through ONNX Runtime; ``spec.compared_positions`` limits where values are compared."""
    return compare_cases(ort_runner(path, threads=threads), cases, atol=atol, spec=spec)


def compare_cases(run, cases: list[ReferenceCase], *, atol: float, spec=None) -> ComparisonReport:
    """Run every case through ``run`` (feeds -> outputs by name, any backend) and compare with its outputs."""
    items = []
    for case in cases:
        where = spec.compared_positions(case.inputs) if spec is not None else None
        try:
            got = run(case.inputs)
        except TorchshipError:
            raise
        except Exception as exc:  # the runtime refuses the graph at this shape: a failed validation, said in a line
            raise ValidationError(f"the model fails to run at {case.label}: {root_cause(exc)}") from None
        items.extend(compare_outputs(case.outputs, got, atol=atol, case=case.label, where=where))
    return ComparisonReport(tuple(items))


def check(report: ComparisonReport, *, what: str) -> None:
    """Raise with every mismatch listed when ``report`` failed."""
    if report.ok:
        return
    lines = "; ".join(i.describe() for i in report.failures)
    raise ValidationError(
        f"{what} does not match eager PyTorch: {lines}. If the difference is expected "
        "(e.g. a lower-precision variant), raise the tolerance with --atol",
        report,
    )
