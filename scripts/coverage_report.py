"""scripts/coverage.py's reports: coverage.json (every row and the environment) and SUMMARY.md (per mapping)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

OPTIMUM_TYPES = 151  # model types Optimum registers for ONNX export; it pins transformers < 4.58
BAR = 0.90  # the bar: of those that run eagerly, the share that exports and validates


def mapping_stats(rows: list[dict], tasks: dict[str, str], totals: dict[str, int]) -> dict[str, dict]:
    """Per mapping: how many config classes it holds, were swept, built, ran eagerly, exported, validated; and the
    reasons of those it could not build at tiny size (reason -> count)."""
    out = {}
    for mapping, task in tasks.items():
        mine = [r for r in rows if r["mapping"] == mapping]
        ran = sum(bool(r["ran_eagerly"]) for r in mine)
        validated = sum(bool(r["validated"]) for r in mine)
        not_built = collections.Counter(_reason_kind(r["reason"]) for r in mine if r["built"] is False)
        out[mapping] = {"task": task, "config_classes": totals.get(mapping, len(mine)), "swept": len(mine),
                        "built": sum(bool(r["built"]) for r in mine), "ran_eagerly": ran,
                        "exported": sum(bool(r["exported"]) for r in mine), "validated": validated,
                        "validated_of_eager": round(validated / ran, 4) if ran else None,
                        "untyped_errors": sum(r.get("typed") is False and r["stage"] in ("export", "validate")
                                              for r in mine),
                        "timeouts_or_crashes": sum(r["stage"] in ("timeout", "crash") for r in mine),
                        "not_built": dict(not_built.most_common())}
    return out


def _reason_kind(reason: str | None) -> str:
    """A build failure's reason without the class name, so that the same cause counts once."""
    if not reason:
        return "unknown"
    text = reason.split(" fails: ", 1)[-1]
    return text[:160]


def write_reports(output: Path, rows: list[dict], environment: dict, tasks: dict[str, str],
                  totals: dict[str, int]) -> tuple[Path, Path]:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    stats = mapping_stats(rows, tasks, totals)
    data = {"environment": environment, "mappings": stats, "rows": rows}
    json_path, md_path = output / "coverage.json", output / "SUMMARY.md"
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    md_path.write_text(summary_markdown(rows, stats, environment))
    return json_path, md_path


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.0f}%" if d else "–"


def summary_markdown(rows: list[dict], stats: dict[str, dict], env: dict) -> str:
    v = env["versions"]
    lines = ["# Coverage: transformers' auto mappings through torchship", "",
             f"Made by `{env['command']}` on {env['cpu']} ({env['cpus']} CPUs), {env['date']}, in "
             f"{env['seconds']:.0f} s; transformers {v.get('transformers')}, torch {v.get('torch')}, "
             f"ONNX Runtime {v.get('onnxruntime')}, torchship {v.get('torchship')}.", "",
             "Each config class of a mapping is built at tiny size (its defaults with the size fields shrunk by name), "
             "run eagerly on a batch of two, exported through torchship with the mapping's task and validated there "
             "against eager PyTorch at shapes other than the traced one (the manifest's `validation`).", ""]
    ran = sum(bool(r["ran_eagerly"]) for r in rows)
    validated = [r for r in rows if r["validated"]]
    types = sorted({r["model_type"] for r in validated})
    lines += [f"torchship exported and validated {len(types)} model types ({len(validated)} of the {ran} "
              f"architecture × task pairs that ran eagerly, {_pct(len(validated), ran)}); Optimum registers "
              f"{OPTIMUM_TYPES} model types for ONNX export but needs transformers < 4.58, so on transformers "
              f"{v.get('transformers')} it exports none.", ""]
    lines += ["| mapping | task | config classes | swept | built at tiny size | ran eagerly | exported | validated "
              "| validated of those that ran eagerly |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keys = ("config_classes", "swept", "built", "ran_eagerly", "exported", "validated")
    for mapping, s in stats.items():
        lines.append(f"| {mapping} | {s['task']} | " + " | ".join(str(s[k]) for k in keys) +
                     f" | {_pct(s['validated'], s['ran_eagerly'])} |")
    total = {k: sum(s[k] for s in stats.values()) for k in keys}
    lines.append("| **all** | | " + " | ".join(f"**{total[k]}**" for k in keys) +
                 f" | **{_pct(total['validated'], total['ran_eagerly'])}** |")
    untyped = sum(s["untyped_errors"] for s in stats.values())
    share = total["validated"] / total["ran_eagerly"] if total["ran_eagerly"] else 0.0
    lines += ["", f"Bar: at least {BAR:.0%} of those that ran eagerly validate — {'met' if share >= BAR else 'not met'} "
                  f"({share:.1%}); refusals that were not one typed torchship line (tracebacks): {untyped}; "
                  f"timed out or crashed: {sum(s['timeouts_or_crashes'] for s in stats.values())}.", ""]
    lines += _not_built(stats) + _failures(rows) + _validated(validated)
    return "\n".join(lines) + "\n"


def _not_built(stats: dict[str, dict]) -> list[str]:
    out = ["## Not built at tiny size", "",
           "transformers ships no tiny configs; these config classes could not be built small by the generic "
           "shrinking (each reason with how many classes it stopped).", "",
           "| mapping | not built | reasons |", "|---|---:|---|"]
    for mapping, s in stats.items():
        n = s["swept"] - s["built"]
        if n:
            reasons = "; ".join(f"{_cell(r)} ({c})" for r, c in s["not_built"].items())
            out.append(f"| {mapping} | {n} | {reasons} |")
    return out + [""]


STAGES = {"build": "not built", "eager": "did not run eagerly", "save": "could not be saved",
          "refused": "refused by torchship", "export": "export failed", "validate": "exported, did not validate",
          "timeout": "timed out", "crash": "crashed"}


def _failures(rows: list[dict]) -> list[str]:
    failed = [r for r in rows if not r["validated"]]
    out = ["## Failures", "", "Every row that did not validate, with the first line of why (a torchship error is one "
           "typed line; *untyped* marks one that was not, a bug).", "",
           "| model type | mapping | stage | reason |", "|---|---|---|---|"]
    for r in sorted(failed, key=lambda r: (list(STAGES).index(r["stage"]) if r["stage"] in STAGES else 99,
                                           r["mapping"], r["model_type"])):
        err = f"{r['error_type']}: " if r.get("error_type") and r["stage"] not in ("refused",) else ""
        mark = " *untyped*" if r.get("typed") is False and r["stage"] in ("export", "validate") else ""
        max_abs = f" (max error {r['max_abs']:.2g})" if r.get("max_abs") is not None else ""
        out.append(f"| {r['model_type']} | {r['mapping']} | {STAGES.get(r['stage'], r['stage'])}{mark} | "
                   f"{_cell(err + (r['reason'] or ''))}{max_abs} |")
    return out + [""]


def _validated(rows: list[dict]) -> list[str]:
    out = ["## Validated", "", "| model type | mapping | family | exporter | max error | tolerance | fused |",
           "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['model_type']} | {r['mapping']} | {r.get('family') or ''} | {r.get('exporter') or ''} | "
                   f"{_num(r.get('max_abs'))} | {_num(r.get('atol'))} | {_cell(_fused(r.get('optimize')))} |")
    return out + [""]


def _fused(opt: dict | None) -> str:
    if not opt:
        return ""
    parts = []
    for name, f in opt.items():
        if isinstance(f, dict) and "fused_ops" in f:
            attn = f"attention {f['attention']}/{f['expected_attention']}" if f.get("attention") is not None else ""
            ops = ", ".join(f"{op} {n}" for op, n in f["fused_ops"].items())
            parts.append(f"{name}: " + "; ".join(p for p in (attn, ops) if p))
    if opt.get("error"):
        parts.append(f"optimize failed: {opt['error']}")
    return " · ".join(parts)


def _num(x) -> str:
    return f"{x:.2g}" if isinstance(x, (int, float)) else ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:240]
