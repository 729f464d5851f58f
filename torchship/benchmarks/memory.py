"""Peak memory of a decoder benchmark's rows, each measured alone in a fresh process.

For each row a child Python imports what every row needs (torch, transformers, onnxruntime, torchship),
makes the inputs of the benchmark's largest prefill and largest decode step, and reads its resident set
(VmRSS); then it resets the kernel's high-water mark, loads the row's model, runs those two cases twice,
and reads the high-water mark (VmHWM). The row's peak memory is the difference: the resident memory its
model and runtime add at its largest case, with nothing else loaded in the process. Linux only (it reads
/proc/self); elsewhere the rows say "not measured".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from torchship import _progress
from torchship.errors import first_line

PROC_STATUS = Path("/proc/self/status")
WHAT = ("peak memory: resident memory added by loading the row's model and running its largest prefill and "
        "decode step, each row alone in a fresh process (Linux VmHWM after the load minus VmRSS before it)")


def _status_mb(field: str) -> float | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux 4.0+: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def probe(job: dict) -> dict:
    """In the child: the row's resident memory before its model is loaded and its high-water mark after it ran
    the cases. ``job``: folder, name, threads, reference_model, genai_model, cases [[batch, seq, past]], seed."""
    import onnxruntime  # noqa: F401  every row's baseline holds the same libraries
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from torchship.artifact import Artifact
    from torchship.benchmarks.decoder_runners import make_runner, timed
    from torchship.exporters.spec import BATCH, PAST_SEQUENCE, SEQUENCE, family_of, saved_config

    artifact = Artifact.open(job["folder"])
    spec, config, io = family_of(artifact.manifest), saved_config(artifact), artifact.manifest.io()
    feeds = [spec.sample_inputs(config, io, spec.case_for({BATCH: b, SEQUENCE: s, PAST_SEQUENCE: p}, config),
                                seed=job["seed"]) for b, s, p in job["cases"]]
    runner = make_runner(artifact, job["name"], threads=job["threads"], reference_model=job["reference_model"],
                         genai_model=Path(job["genai_model"]) if job["genai_model"] else None)
    before = _status_mb("VmRSS")
    reset = _reset_peak()
    runner.activate()
    for f in feeds:
        step = timed(runner, f)
        for _ in range(2):
            step()
    peak = _status_mb("VmHWM")
    runner.deactivate()
    if before is None or peak is None:
        return {"peak_mb": None}
    return {"peak_mb": round(peak - before, 1), "process_peak_mb": round(peak, 1), "baseline_mb": round(before, 1),
            "peak_reset": reset}


def measure(folder, jobs: dict[str, dict], *, progress: _progress.Progress = _progress.SILENT,
            timeout_s: float = 1800) -> tuple[dict[str, dict], list[str]]:
    """Peak memory per row name, each probed in its own process, one after another (side by side they would
    multiply the memory the bench needs: four copies of a 7B model); a probe that fails leaves its row without
    a number and says why in a note."""
    if not PROC_STATUS.exists():
        return {}, ["peak memory not measured: it reads /proc/self (Linux only)"]
    progress.step(f"measuring the peak memory of {len(jobs)} rows, each alone in a fresh process")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]))

    def run(name, job):
        command = [sys.executable, "-m", "torchship.benchmarks.memory", json.dumps({"folder": str(folder),
                                                                                   "name": name, **job})]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"its probe ran past {timeout_s:g} s"
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            return None, (lines[-1] if lines else f"exit {proc.returncode}")[:300]
        lines = proc.stdout.strip().splitlines()
        if not lines:
            return None, "its probe printed no result"
        return json.loads(lines[-1]), None

    out, notes = {}, []
    for name, job in jobs.items():
        result, why = run(name, job)
        if result is None:
            notes.append(f"peak memory of {name} not measured: {why}")
        else:
            out[name] = result
    return out, notes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        result = probe(json.loads(argv[0]))
    except Exception as exc:  # the parent reports the last stderr line as the reason
        print(f"{type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
