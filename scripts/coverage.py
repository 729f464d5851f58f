#!/usr/bin/env python
"""How much of transformers torchship exports: every config class of transformers' own auto mappings, built at
tiny size, run eagerly, exported through torchship and validated against eager PyTorch.

    python scripts/coverage.py [--mappings masked-lm,causal-lm,...] [--limit N] [--only TYPE,...] [--jobs N]
                               [--timeout S] [--optimize] [--output reports/coverage]

transformers ships no tiny configs: each config class is built with its defaults and its size fields shrunk by
name (scripts/coverage_tiny.py); a random model of the mapping's class is saved with a tiny tokenizer, image
processor or feature extractor, run eagerly, then exported with ``torchship.exporters.export.export`` and the
mapping's task. Each architecture runs in its own process (``--jobs`` at once), so a crash or a hang (``--timeout``
seconds per row) costs that row only. Writes ``coverage.json`` (every row and the environment) and ``SUMMARY.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coverage_report import write_reports  # noqa: E402

# mapping -> (transformers' mapping of model type to class, torchship task names in order of preference, modality,
# labels of a random head). The first task name torchship knows is used (the generic families may name theirs).
MAPPINGS = {
    "masked-lm": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", ("fill-mask",), "text", None),
    "sequence-classification": ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", ("text-classification",),
                                "text", 3),
    "token-classification": ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", ("token-classification",), "text", 5),
    "question-answering": ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", ("question-answering",), "text", None),
    "causal-lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", ("text-generation",), "text", None),
    "image-classification": ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", ("image-classification",), "image", 3),
    "image-features": ("MODEL_FOR_IMAGE_MAPPING_NAMES", ("image-feature-extraction", "feature-extraction"),
                       "image", None),
    "ctc": ("MODEL_FOR_CTC_MAPPING_NAMES", ("automatic-speech-recognition", "ctc", "speech-recognition"), "audio",
            None),
    "audio-classification": ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", ("audio-classification",), "audio", 3),
}


def mapping_entries(mapping: str) -> dict[str, str]:
    """model type -> model class name, in transformers' order (the first class where it names several)."""
    from transformers.models.auto import modeling_auto

    names = getattr(modeling_auto, MAPPINGS[mapping][0], None) or {}
    return {mt: (cls[0] if isinstance(cls, (list, tuple)) else cls) for mt, cls in names.items()}


def task_of(mapping: str) -> str:
    from torchship.exporters import spec

    names = MAPPINGS[mapping][1]
    return next((t for t in names if t in spec.TASKS), names[0])


def plan(mappings, only=None, limit=None) -> dict[str, list[str]]:
    """model type -> the mappings it is swept in (``only``: these model types; ``limit``: the first N of each)."""
    out: dict[str, list[str]] = {}
    for mapping in mappings:
        types = [mt for mt in mapping_entries(mapping) if not only or mt in only]
        for mt in types[:limit] if limit else types:
            out.setdefault(mt, []).append(mapping)
    return out


# ---- one row, in the worker --------------------------------------------------------------------------------------

def run_row(model_type: str, mapping: str, work: Path, *, optimize: bool = False) -> dict:
    """Build, run, export and validate one (architecture, mapping); every failure is a reason in the row."""
    _, _, modality, labels = MAPPINGS[mapping]
    class_name = mapping_entries(mapping)[model_type]
    row = {"model_type": model_type, "mapping": mapping, "task": task_of(mapping), "modality": modality,
           "model_class": class_name, "built": False, "ran_eagerly": False, "exported": False, "validated": False,
           "stage": "build", "reason": None, "error_type": None, "typed": None, "seconds": {}}
    steps = [_build, _eager, _save, _export]
    if optimize:
        steps.append(_optimize)
    state = {"work": Path(work), "labels": labels}
    for step in steps:
        start = time.perf_counter()
        try:
            done = step(row, state)
        finally:
            row["seconds"][step.__name__[1:]] = round(time.perf_counter() - start, 2)
        if not done:
            break
    return row


def _build(row, state) -> bool:
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from coverage_tiny import TinyError, sizes, tiny_config

    try:
        config_cls = CONFIG_MAPPING[row["model_type"]]
    except Exception as exc:  # noqa: BLE001 (a lazy import of a missing package)
        return _fail(row, "build", f"no config class: {_line(exc)}", exc)
    row["config_class"] = config_cls.__name__
    model_cls = getattr(transformers, row["model_class"], None)
    if model_cls is None:
        return _fail(row, "build", f"transformers has no {row['model_class']} here (a missing optional package?)")
    try:
        config = tiny_config(config_cls, labels=state["labels"], pad_token_id=0 if row["modality"] == "text" else None)
    except TinyError as exc:
        return _fail(row, "build", str(exc), exc)
    if row["mapping"] == "causal-lm" and getattr(config, "is_decoder", None) is False:
        config.is_decoder = True  # an encoder's causal-LM class (BertLMHeadModel) needs it, as transformers warns
    try:
        torch.manual_seed(0)
        model = model_cls._from_config(config).eval()
    except Exception as exc:  # noqa: BLE001 (any model constructor's failure is the reason)
        return _fail(row, "build", f"{row['model_class']} at tiny size fails: {_line(exc)}", exc)
    row.update(built=True, sizes=sizes(config), parameters=sum(p.numel() for p in model.parameters()),
               stage="eager")
    state.update(model=model, config=config)
    return True


def _eager(row, state) -> bool:
    import inspect

    import torch

    from coverage_tiny import eager_inputs

    model = state["model"]
    params = inspect.signature(model.forward).parameters
    feeds = eager_inputs(row["modality"], state["config"], params)
    if not feeds:
        return _fail(row, "eager", f"forward takes none of the {row['modality']} inputs "
                                   f"({', '.join(list(params)[:4])}, ...)")
    try:
        with torch.no_grad():
            model(**feeds)
    except Exception as exc:  # noqa: BLE001
        return _fail(row, "eager", _line(exc), exc)
    row.update(ran_eagerly=True, stage="save", inputs=sorted(feeds))
    return True


def _save(row, state) -> bool:
    from coverage_tiny import save_processor

    src = state["work"] / "checkpoint"
    try:
        state.pop("model").save_pretrained(src)
        row["processor"] = save_processor(row["modality"], row["task"], row["model_type"], state["config"], src)
    except Exception as exc:  # noqa: BLE001
        return _fail(row, "save", _line(exc), exc)
    state["src"] = src
    row["stage"] = "export"
    return True


def _export(row, state) -> bool:
    from torchship.errors import TorchshipError, UnsupportedModelError, ValidationError
    from torchship.exporters.export import ExportOptions, export

    out = state["work"] / "export"
    row["reason_path"] = str(state["src"])  # taken out of the reasons below: a temporary folder says nothing
    try:
        artifact = export(str(state["src"]), out, ExportOptions(task=row["task"]))
    except ValidationError as exc:
        report = getattr(exc, "report", None)
        row.update(exported=True, max_abs=_number(getattr(report, "max_abs", None)))
        return _fail(row, "validate", str(exc).splitlines()[0], exc, typed=True)
    except UnsupportedModelError as exc:
        return _fail(row, "refused", str(exc).splitlines()[0], exc, typed=True)
    except TorchshipError as exc:
        return _fail(row, "export", str(exc).splitlines()[0], exc, typed=True)
    except Exception as exc:  # noqa: BLE001 (torchship should not let one through: counted as untyped)
        return _fail(row, "export", _line(exc), exc, typed=False)
    m = artifact.manifest
    validation = m.variants["model"].validation
    row.update(exported=True, validated=bool(validation and validation.passed), family=m.family,
               exporter=(m.export or {}).get("exporter"), atol=_number(getattr(m, "atol", None)),
               max_abs=_number(validation.max_abs if validation else None), stage="done", typed=True)
    row.pop("reason_path", None)
    state["artifact"] = out
    return True


def _optimize(row, state) -> bool:
    """ONNX Runtime's graph level 'all' and its transformer fusion where it knows the model type; no timing."""
    from torchship.artifact import Artifact
    from torchship.errors import TorchshipError
    from torchship.optimizers import OptimizeOptions, optimize

    fused = {}
    try:
        optimize(state["artifact"], OptimizeOptions(levels=("all",), candidates="preset", approximate=False,
                                                    dispatch=None))
    except TorchshipError as exc:
        fused["error"] = str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001
        fused["error"] = f"{type(exc).__name__}: {_line(exc)} (untyped)"
    m = Artifact.open(state["artifact"]).manifest
    for name, variant in m.variants.items():
        if variant.fusion is not None and name != "model":
            f = variant.fusion
            fused[name] = {"attention": f.attention, "expected_attention": f.expected_attention,
                           "fused_ops": {op: n for op, n in sorted(f.counts.items()) if op in FUSED_OPS and n}}
    fused["skipped"] = dict(m.skipped)
    row["optimize"] = fused
    return True


FUSED_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization",
             "EmbedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "BiasSplitGelu", "RotaryEmbedding",
             "MatMulNBits", "QuickGelu", "BiasAdd")


def _fail(row, stage, reason, exc=None, typed=None) -> bool:
    where = row.pop("reason_path", None)
    if where and reason:
        reason = reason.replace(where, "the checkpoint")
    row.update(stage=stage, reason=reason, error_type=type(exc).__name__ if exc is not None else None, typed=typed)
    return False


def _line(exc: BaseException) -> str:
    from coverage_tiny import _line as line

    return line(exc)


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN: no number


# ---- the sweep ---------------------------------------------------------------------------------------------------

def worker(model_type: str, mappings: list[str], rows_file: Path, work: Path, optimize: bool) -> None:
    """Run one architecture's rows in this process, one JSON line each, flushed as each ends."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per saved or loaded tiny model says nothing here
    for mapping in mappings:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            row = run_row(model_type, mapping, Path(tmp), optimize=optimize)
        with open(rows_file, "a") as f:
            f.write(json.dumps(row) + "\n")


def _isolated(model_type: str, mappings: list[str], work: Path, timeout: float, optimize: bool,
              threads: int) -> list[dict]:
    """The architecture's rows from a child process; a row that hangs past ``timeout`` or crashes the child is
    recorded as such, and the rows after it run in a fresh child."""
    rows: list[dict] = []
    rows_file = work / f"{model_type}.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    while len(rows) < len(mappings):
        left = mappings[len(rows):]
        rows_file.write_text("")
        cmd = [sys.executable, __file__, "--worker", model_type, "--mappings", ",".join(left), "--work", str(work),
               *(["--optimize"] if optimize else [])]
        log = work / f"{model_type}.log"
        with open(log, "w") as err:
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
            done, last = 0, time.monotonic()
            while child.poll() is None:
                time.sleep(0.5)
                now_done = len(rows_file.read_text().splitlines())
                if now_done != done:
                    done, last = now_done, time.monotonic()
                elif time.monotonic() - last > timeout:
                    child.kill()
                    child.wait()
                    break
        got = [json.loads(line) for line in rows_file.read_text().splitlines()]
        rows.extend(got)
        if len(got) < len(left):  # the next row hung or crashed its process
            why = (f"timed out after {timeout:g} s" if child.returncode in (-9, None) else
                   f"the process died (exit {child.returncode}): {_last_line(log)}")
            rows.append({"model_type": model_type, "mapping": left[len(got)], "task": task_of(left[len(got)]),
                         "modality": MAPPINGS[left[len(got)]][2], "model_class": mapping_entries(left[len(got)])
                         .get(model_type), "built": None, "ran_eagerly": None, "exported": False,
                         "validated": False, "stage": "timeout" if "timed out" in why else "crash", "reason": why,
                         "error_type": None, "typed": False, "seconds": {}})
    return rows


def _last_line(log: Path) -> str:
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no output"


def sweep(todo: dict[str, list[str]], *, jobs: int = 1, timeout: float = 600, optimize: bool = False,
          isolate: bool = True, progress=print, done_file: Path | None = None) -> list[dict]:
    """Every row of ``todo`` (model type -> mappings); ``isolate=False`` runs them in this process (tests).
    ``done_file``: each architecture's rows are appended there as it ends, so a stopped sweep resumes."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="torchship-coverage-") as tmp:
        work = Path(tmp)
        if not isolate:
            for mt, mappings in todo.items():
                worker(mt, mappings, work / "rows.jsonl", work, optimize)
            return [json.loads(line) for line in (work / "rows.jsonl").read_text().splitlines()]
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = {pool.submit(_isolated, mt, m, work, timeout, optimize, threads): mt for mt, m in todo.items()}
            for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
                got = future.result()
                rows.extend(got)
                if done_file is not None:
                    with open(done_file, "a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in got)
                progress(f"[{i}/{len(todo)}] {futures[future]}: " + ", ".join(
                    f"{r['mapping']} {'validated' if r['validated'] else r['stage']}" for r in got))
    order = {mt: i for i, mt in enumerate(todo)}
    return sorted(rows, key=lambda r: (list(MAPPINGS).index(r["mapping"]), order[r["model_type"]]))


def _resumed(done_file: Path, todo: dict[str, list[str]]) -> list[dict]:
    """The rows an earlier run finished, of architectures whose rows it has for every mapping asked now."""
    if not done_file.is_file():
        return []
    found: dict[str, list[dict]] = {}
    for line in done_file.read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["model_type"], []).append(row)
    return [r for mt, got in found.items() if mt in todo and {r["mapping"] for r in got} >= set(todo[mt])
            for r in got if r["mapping"] in todo[mt]]


def environment(command: str, seconds: float, args: dict) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torchship", "transformers", "torch", "onnxruntime", "onnx", "onnxscript", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"versions": {"python": platform.python_version(), **versions}, "cpu": cpu, "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
            "seconds": round(seconds, 1), "options": args}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mappings", default=",".join(MAPPINGS), help=f"comma-separated, of {', '.join(MAPPINGS)}")
    ap.add_argument("--limit", type=int, default=None, help="the first N model types of each mapping")
    ap.add_argument("--only", default=None, help="comma-separated model types")
    ap.add_argument("--jobs", type=int, default=1, help="architectures at once (one process each)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one row may take before it is killed")
    ap.add_argument("--optimize", action="store_true", help="also run optimize (graph level all, fusion), untimed")
    ap.add_argument("--in-process", action="store_true", help="no child processes (tests, debugging)")
    ap.add_argument("--output", type=Path, default=ROOT / "reports" / "coverage")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of architectures an earlier, stopped run of the same sweep finished "
                         "(OUTPUT/rows.jsonl) and run only the others")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    mappings = [m.strip() for m in args.mappings.split(",") if m.strip()]
    unknown = [m for m in mappings if m not in MAPPINGS]
    if unknown:
        ap.error(f"unknown mapping {unknown[0]!r}; use {', '.join(MAPPINGS)}")
    if args.worker:  # a child: its warnings would only fill the log whose last line a crash quotes
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        worker(args.worker, mappings, args.work / f"{args.worker}.jsonl", args.work, args.optimize)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    only = {t.strip() for t in args.only.split(",")} if args.only else None
    planned = plan(mappings, only, args.limit)
    todo = planned
    args.output.mkdir(parents=True, exist_ok=True)
    done_file = args.output / "rows.jsonl"
    kept = _resumed(done_file, todo) if args.resume else []
    if not args.resume:
        done_file.unlink(missing_ok=True)
    todo = {mt: m for mt, m in todo.items() if mt not in {r["model_type"] for r in kept}}
    start = time.perf_counter()
    rows = kept + sweep(todo, jobs=args.jobs, timeout=args.timeout, optimize=args.optimize,
                        isolate=not args.in_process, done_file=None if args.in_process else done_file)
    order = {mt: i for i, mt in enumerate(planned)}
    rows.sort(key=lambda r: (list(MAPPINGS).index(r["mapping"]), order[r["model_type"]]))
    command = "python scripts/coverage.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    options = {"mappings": mappings, "limit": args.limit, "only": sorted(only) if only else None,
               "jobs": args.jobs, "timeout": args.timeout, "optimize": args.optimize}
    totals = {m: len(mapping_entries(m)) for m in mappings}
    write_reports(args.output, rows, environment(command.strip(), time.perf_counter() - start, options),
                  {m: task_of(m) for m in mappings}, totals)
    print(f"wrote {args.output / 'SUMMARY.md'} and coverage.json ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
