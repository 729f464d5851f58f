"""The dispatch table that ``torchship optimize`` measured, as people read it: which variant runs which shape
range, its median, and how much slower the runner-up was (the numbers stay in the manifest)."""

from __future__ import annotations

from torchship.benchmarks.results import UNSTABLE_SPREAD
from torchship.variants import backend_of_variant


def _span(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+" if lo > 1 else "any"
    return str(hi) if lo == hi else f"{lo}-{hi}"


def dispatch_markdown(table: dict) -> str:
    """A Markdown table, one row per shape range, with the measured shape it was judged at."""
    machine, plan = table["machine"], table["plan"]
    shapes = {(s["batch"], s["sequence"]): s for s in table["shapes"]}
    lines = [
        f"Measured dispatch ({machine['threads']} threads on {machine['cpu']}, ORT spinning off; median of up to "
        f"{plan['max_rounds']} interleaved rounds per shape; a variant earlier in the preference order is kept "
        f"unless the fastest is more than {plan['margin']:.0%} faster and its p90 below the kept one's median, "
        "so a ratio under 1.0 means the runner-up's lead was within the noise):",
        "",
        "| batch | sequence | runs | measured at | median ms | p90/p10 | runner-up | runner-up ms | ratio |",
        "|---|---|---|---|---:|---:|---|---:|---:|",
    ]
    for r in table["ranges"]:
        key = tuple(r["measured_at"])
        s = shapes[key]
        best = s["times"][s["winner"]]
        up = s["times"][s["runner_up"]]["median_ms"] if s["runner_up"] else None
        spread = "-" if best["spread"] is None else f"{best['spread']:.2f}" + (
            " unstable" if best["spread"] > UNSTABLE_SPREAD else "")
        lines.append(
            f"| {_span(*r['batch'])} | {_span(*r['sequence'])} | {backend_of_variant(r['variant']).name} | "
            f"b{key[0]} s{key[1]} | {best['median_ms']:.2f} | {spread} | "
            f"{'-' if up is None else backend_of_variant(s['runner_up']).name} | "
            f"{'-' if up is None else f'{up:.2f}'} | {'-' if s['ratio'] is None else '%.3fx' % s['ratio']} |")
    if table.get("excluded"):
        lines.append("")
        lines += [f"not timed: {name} ({why})" for name, why in table["excluded"].items()]
    return "\n".join(lines)


def all_times_markdown(table: dict) -> str:
    """Every candidate's median (ms) at every measured shape."""
    names = list(table["candidates"])
    lines = ["| shape | " + " | ".join(backend_of_variant(n).name for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for s in table["shapes"]:
        cells = [f"**{s['times'][n]['median_ms']:.2f}**" if n == s["winner"] else f"{s['times'][n]['median_ms']:.2f}"
                 for n in names]
        lines.append(f"| b{s['batch']} s{s['sequence']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
