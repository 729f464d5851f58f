"""The dispatch table that ``torchship optimize`` measured, as people read it: which variant runs which shape
range, its median, and how much slower the runner-up was (the numbers stay in the manifest)."""

from __future__ import annotations

from torchship._ort import spin_label
from torchship.benchmarks.results import UNSTABLE_SPREAD
from torchship.dispatch_table import DEFAULT, DispatchTable, split_key
from torchship.backends import backend_of_variant
from torchship.optimizers import approximate


def _span(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+" if lo > 1 else "any"
    return str(hi) if lo == hi else f"{lo}-{hi}"


def _at(batch: int, sequence: int) -> str:
    """A measured shape: ``b8 s128``; ``b8`` for a model without a sequence axis (images, recorded as 0)."""
    return f"b{batch} s{sequence}" if sequence else f"b{batch}"


def _name(table: DispatchTable, key: str) -> str:
    """The backend name, marked when the variant is approximate, with the session tuning of a final's runner
    (``variant@tuning``) when it is not ORT's default."""
    variant, tuning = split_key(key)
    name = backend_of_variant(variant).name
    candidate = table.candidates.get(variant)
    if candidate is not None and candidate.approximate:
        name += " (approximate)"
    return f"{name}, {tuning}" if tuning != DEFAULT else name


def dispatch_markdown(table: DispatchTable) -> str:
    """A Markdown table, one row per shape range, with the measured shape it was judged at."""
    machine, plan = table.machine, table.plan
    lines = [
        f"Measured dispatch ({machine.threads} threads on {machine.cpu}, "
        f"ORT spinning {spin_label(machine.spin)}; median of up to "
        f"{plan.max_rounds} interleaved rounds per shape"
        + (f", then a final of the best {plan.finalists} with and without each session tuning "
           f"({', '.join(t for t in plan.tunings if t != DEFAULT)}), {plan.final_rounds} rounds at least"
           if plan.finalists is not None else "")
        + f"; a variant earlier in the preference order is kept "
        f"unless the fastest is more than {plan.margin:.0%} faster and faster in clearly more than half of the "
        "paired rounds (a sign test), so a ratio under 1.0 means the runner-up's lead was within the noise):",
        "",
        "| batch | sequence | runs | measured at | median ms | p90/p10 | runner-up | runner-up ms | ratio |",
        "|---|---|---|---|---:|---:|---|---:|---:|",
    ]
    for r in table.ranges:
        key = r.measured_at
        s = table.shape(*key)
        best = s.timing(s.winner_key)
        up = s.timing(s.runner_up).median_ms if s.runner_up else None
        spread = "-" if best.spread is None else f"{best.spread:.2f}" + (
            " unstable" if best.spread > UNSTABLE_SPREAD else "")
        lines.append(
            f"| {_span(*r.batch)} | {_span(*r.sequence)} | {_name(table, s.winner_key)} | "
            f"{_at(*key)} | {best.median_ms:.2f} | {spread} | "
            f"{'-' if up is None else _name(table, s.runner_up)} | "
            f"{'-' if up is None else f'{up:.2f}'} | {'-' if s.ratio is None else '%.3fx' % s.ratio} |")
    if table.excluded:
        lines.append("")
        lines += [f"not timed: {name} ({why})" for name, why in table.excluded.items()]
    lines += _approximate_lines(table)
    return "\n".join(lines)


def _approximate_lines(table: DispatchTable) -> list[str]:
    """What an approximate candidate is, how it was judged, and whether the table chose it anywhere."""
    out = []
    for variant, c in table.candidates.items():
        if not c.approximate:
            continue
        shapes = [_at(s.batch, s.sequence) for s in table.shapes if s.winner == variant]
        cosine = c.min_cosine if c.min_cosine is not None else float("nan")
        out += ["", f"{backend_of_variant(variant).name} is approximate: {c.approximate}; judged by the "
                    f"smallest output cosine against the fp32 export, {cosine:.6f} "
                    f"(>= {approximate.MIN_COSINE}), max abs {c.max_abs or float('nan'):.1e}. "
                + (f"**The table chose it at {', '.join(shapes)}**" if shapes else "The table chose it nowhere")
                + "; `torchship optimize --exact` leaves it out."]
    return out


def all_times_markdown(table: DispatchTable) -> str:
    """Every candidate's median (ms) at every measured shape in the screen, the first stage of timing, with ORT's
    default session; the chosen one is bold, with its median in the final (the number the dispatch table shows,
    with the session tuning it won with) beside it, since a screen median may be larger than another's."""
    names = list(table.candidates)
    lines = ["Screen medians (ms, ORT's default session, every candidate interleaved); **bold**: the variant "
             "chosen at that shape, then → its median in the final (its winning session tuning in brackets), "
             "which decided; a smaller screen number beside a bold one lost in the final or by the margin:", "",
             "| shape | " + " | ".join(_name(table, n) for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for s in table.shapes:
        cells = []
        for n in names:
            screen = f"{s.times[n].median_ms:.2f}"
            if n != s.winner:
                cells.append(screen)
                continue
            final = s.timing(s.winner_key).median_ms
            cells.append(f"**{screen}** → {final:.2f}" + (f" [{s.session}]" if s.session != DEFAULT else ""))
        lines.append(f"| {_at(s.batch, s.sequence)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
