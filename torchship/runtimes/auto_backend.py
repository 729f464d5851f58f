"""What ``--backend auto`` runs (predict, generate): the fastest variant judged within its budget on this machine,
as optimize and quantize measured it, with one line that says which and why.

The rule, deterministic and in this order:

1. A folder opened through a torchship auto output: the backend auto chose (it timed every variant itself).
2. Among the runs with a timing recorded on this machine's CPU: the measured fp32 dispatch (``ort-measured``,
   when optimize's table was timed on this CPU), the int8 variant (judged within its budget by quantize, and
   timed by it against the fp32 export; one made before int8 scaled activations per row is passed over) and each
   weight-only variant (judged within its budget with no
   far-from-fp32 warning, its decode step timed against the fastest fp32 decoder file): the one with the
   largest speed-up over fp32 at the shape it was timed (for int8, against the table's range that holds that
   shape; without a table, a variant must beat fp32); a tie keeps fp32.
3. Else the most optimized validated variant in the backend table's preference order.

A variant without such a timing (fp16, OpenVINO; anything timed on another CPU) is never picked by auto: it runs
when named with --backend, and ``bench`` times it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torchship.artifact import Artifact
from torchship.benchmarks.timing import cpu_name
from torchship.dispatch_table import DispatchTable
from torchship.backends import backend, backend_of_variant

MEASURED = "ort-measured"
INT8 = backend("ort-int8")
_SHAPE = re.compile(r"batch (\d+)(?: x seq (\d+))?")  # images: "batch 8 images", sequence 0


@dataclass(frozen=True)
class AutoBackend:
    backend: str
    why: str

    def line(self) -> str:
        return f"backend auto: {self.backend} ({self.why})"


def _fp32_speedup(table: DispatchTable, batch: int, sequence: int) -> float | None:
    """The dispatch winner's speed-up over the fp32 export at the measured shape whose range holds ``batch`` x
    ``sequence``, from the screen (every candidate timed together); None when the export was not timed."""
    held = table.range_at(batch, sequence)
    shape = table.shape(*held.measured_at) if held is not None and held.measured_at else None
    if shape is None:
        return None
    times = shape.times
    export, variant = table.same_as.get("model", "model"), held.variant
    if export not in times or variant not in times:
        return None
    return times[export].median_ms / times[variant].median_ms


def choose(artifact: Artifact, cpu: str | None = None) -> AutoBackend:
    """The backend ``--backend auto`` runs on this machine (``cpu``: its name, read when None)."""
    if artifact.auto_choice:
        return AutoBackend(artifact.auto_choice, "chosen by torchship auto: the fastest within its accuracy budget")
    cpu = cpu or cpu_name()
    m = artifact.manifest
    table = m.dispatch if m.dispatch and m.dispatch.ranges else None
    passed_over = []
    if table and table.machine.cpu != cpu:
        passed_over.append(f"the dispatch table was timed on {table.machine.cpu}")
        table = None
    int8 = artifact.variant_for(INT8.name)
    judged = None
    if int8 is not None:
        opts, val = int8.options, int8.validation
        accuracy = val.accuracy if val else None
        timed_on = opts.cpu
        shape = _SHAPE.search(opts.shape or "")
        if opts.activations is None or (accuracy and accuracy.batch_independent is False):
            passed_over.append(f"{INT8.name} scales activations per tensor, so its answers depend on the batch "
                               f"(quantize again)")
        elif not (val and val.passed) or not opts.speedup_vs_fp32 or shape is None:
            passed_over.append(f"{INT8.name} has no passing accuracy and timing from quantize")
        elif timed_on and timed_on != cpu:
            passed_over.append(f"{INT8.name} was timed on {timed_on}")
        else:
            judged = (float(opts.speedup_vs_fp32), int(shape[1]), int(shape[2] or 0), accuracy)
    quick = _weight_only(artifact, cpu, passed_over)
    note = f"; not considered: {', '.join(passed_over)}" if passed_over else ""
    if quick is not None and (judged is None or quick[1] > judged[0]):
        name, speedup, why = quick
        return AutoBackend(name, f"{why}{note}")
    if judged is not None:
        speedup, batch, sequence, judgement = judged
        fp32 = _fp32_speedup(table, batch, sequence) if table else None
        accuracy = judgement.describe() if judgement and judgement.budget is not None else "within its budget"
        if speedup > (fp32 if fp32 is not None else 1.0):  # without the table's number: it must beat the export
            vs = f"; the measured fp32 dispatch {fp32:.2f}x there" if fp32 is not None else ""
            return AutoBackend(INT8.name, f"quantize timed it {speedup:.2f}x the fp32 export at {batch}x{sequence}, "
                                          f"{accuracy}{vs}{note}")
        lost = f"quantize timed {INT8.name} {speedup:.2f}x the fp32 export at {batch}x{sequence}"
        if table:
            there = f"{fp32:.2f}x" if fp32 is not None else "the export's speed or better"
            return AutoBackend(MEASURED, f"optimize's dispatch timed {there} there, where {lost}{note}")
        note = f"; {lost}{note}"
    if table:
        return AutoBackend(MEASURED, f"the fastest fp32 variant per shape, as torchship optimize timed them on "
                                     f"this CPU{note}")
    best = artifact.best_variant()
    return AutoBackend(backend_of_variant(best).name, "the most optimized validated variant in the preference "
                                                      f"order: no faster run timed on this machine{note}")


def _weight_only(artifact: Artifact, cpu: str, passed_over: list[str]) -> tuple[str, float, str] | None:
    """(backend, speed-up, why) of the fastest weight-only variant judged within its budget, without a far-from-fp32
    warning, whose decode step was timed faster than fp32 on this CPU; what was passed over goes to
    ``passed_over``."""
    best = None
    for name, v in artifact.manifest.variants.items():
        if v.stage != "weight-only":
            continue
        label, val, timing = backend_of_variant(name).name, v.validation, v.options.timing
        if not (val and val.passed) or val.warning:
            passed_over.append(f"{label} is far from fp32" if val and val.warning else f"{label} missed its budget")
        elif timing is None or not timing.speedup_vs_fp32:
            passed_over.append(f"{label} has no decode timing (made by an earlier torchship: quantize it again)")
        elif timing.cpu != cpu:
            passed_over.append(f"{label} was timed on {timing.cpu}")
        elif timing.speedup_vs_fp32 > 1.0 and (best is None or timing.speedup_vs_fp32 > best[1]):
            accuracy = f"{val.accuracy.metric} {val.accuracy.mean:.4f}" if val.accuracy else "accuracy 0.0000"
            best = (label, float(timing.speedup_vs_fp32),
                    f"quantize timed it {timing.speedup_vs_fp32:.2f}x the fastest fp32 file ({timing.fp32}) at "
                    f"the {timing.shape}, {accuracy} within budget")
    return best
