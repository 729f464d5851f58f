"""Measured dispatch: which fp32 variant (and ORT session tuning) runs which shape, chosen by timing on this machine.

After ``optimize`` has built and validated its variants, every validated fp32 ONNX Runtime CPU variant is timed
at a grid of (batch, sequence) shapes (``shape_grid``): a screen of every candidate, then a final of the best
with each session tuning, through the one timing engine and winner rule of ``benchmarks/timing.py``. The result
is data in the manifest (``Manifest.dispatch``), which the ``ort-measured`` predictor reads per call
(``artifact.dispatch_choice``). The algorithm is explained once, in docs/reference.md, "How optimize chooses".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import product

from torchship import _progress
from torchship._fs import hash_file
from torchship._ort import BATCH_SHARDS, SESSION_TUNINGS, make_session, usable_cpus
from torchship._shards import BatchShards, batch_axes, splits
from torchship.benchmarks.timing import (MARGIN, clearly_beats, cpu_name, leads, round_stats, runner_up, settle,
                                         time_rounds, winner)
from torchship.artifact import Artifact
from torchship.dispatch_table import (Candidate, DispatchTable, Machine, Plan, RoundTimes, Settled, ShapeRange,
                                      ShapeTimes, runner_key, split_key)
from torchship.errors import InputError
from torchship.backends import records

CANDIDATE_CHOICES = ("measured", "preset")
DEFAULT_BATCHES = (1, 8)
DEFAULT_SEQUENCES = (16, 128, 384)
TABLE_VERSION = 2  # 2: a final per shape, and a session tuning per range


def candidate_variants() -> tuple[str, ...]:
    """The variants a table may choose from, from the backend table: fp32 ONNX Runtime CPU variants that
    torchship would pick by itself, in its preference order (ties in the timing go to the earlier one), then
    the exact ones only a table may choose (``measured_only``: other attention kernels), then the
    approximate ones (``approximate_gelu``); a later one wins a shape only where clearly faster."""
    cpu = [b for b in records() if b.runtime == "onnxruntime" and b.precision == "fp32" and b.device == "cpu"]
    ranked = sorted((b for b in cpu if b.preference is not None), key=lambda b: b.preference)
    measured_only = [b for b in cpu if b.preference is None and b.measured_only]
    approximate = [b for b in cpu if b.preference is None and b.approximate_gelu]
    return tuple(b.variants[0] for b in ranked + measured_only + approximate)


@dataclass(frozen=True)
class DispatchPlan:
    """How long the timing may take. Per shape, candidates run in rounds until ``seconds`` are spent (at
    least ``min_rounds``, at most ``max_rounds``), then the final likewise (``final_rounds``,
    ``final_max_rounds``); one sample repeats a run until it lasts ``sample_s``, so
    a tiny model's sub-millisecond runs are timed as a batch of runs, a large model's one at a time."""

    min_rounds: int = 3
    max_rounds: int = 40
    # per shape and stage, all candidates together; TORCHSHIP_DISPATCH_SECONDS sets another default (a test suite
    # of tiny models, where the choice does not matter, sets it low)
    seconds: float = field(default_factory=lambda: _default_seconds())
    sample_s: float = 0.001
    warmup: int = 1
    margin: float = MARGIN  # a candidate displaces a preferred one only when faster by more than this (timing.winner)
    threads: int | None = None  # None: every CPU this process may use (as bench)
    finalists: int = 2  # variants that go on to the final, each with every session tuning
    final_rounds: int = 7  # rounds of the final, at least (it may take ``seconds`` more per shape) ...
    final_max_rounds: int = 100  # ... and at most
    tunings: tuple[str, ...] = tuple(SESSION_TUNINGS)
    # a final's fastest runner that leads the kept one by more than the margin, but not yet in clearly more than
    # half of the rounds, runs head to head with it up to this many rounds in all ...
    settle_rounds: int = 40
    settle_seconds: float | None = None  # ... for at most this long (None: 10 x ``seconds``)

    def __post_init__(self):
        if "default" not in self.tunings:  # the screen runs every candidate with ORT's defaults
            raise ValueError(f"a dispatch plan's tunings must include 'default', got {self.tunings}")


def _default_seconds() -> float:
    """2 s per shape and stage, or TORCHSHIP_DISPATCH_SECONDS."""
    text = os.environ.get("TORCHSHIP_DISPATCH_SECONDS", "2")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise InputError(f"TORCHSHIP_DISPATCH_SECONDS must be a number of seconds, 0 or more; it is {text!r} "
                         "(unset it for the default, 2)")
    return value


def dispatched(spec) -> bool:
    """Whether optimize measures a dispatch table for the family: text encoders (batch x sequence) and image
    encoders (batch at the model's one size); audio's free length and decoders' steps are not timed per shape."""
    from torchship.exporters.spec import ENCODE, ENCODE_IMAGE

    return bool({ENCODE, ENCODE_IMAGE} & set(spec.phases))


def sequence_free(io) -> bool:
    """Whether no input has a sequence axis (images at a fixed size): the table's shapes are batches alone,
    recorded with sequence 0 and one sequence range (0, open) that holds it."""
    from torchship.exporters.spec import SEQUENCE

    return not any(SEQUENCE in t.axes for t in io.inputs)


def _threads(plan: DispatchPlan) -> int:
    return plan.threads or usable_cpus()


def shape_grid(artifact: Artifact, spec, config, probe=None) -> tuple[tuple[int, int], ...]:
    """(batch, sequence) pairs to time: each axis's min/use/max from the shape config, else the defaults
    clipped to the model's positions; the full cross product, so the ranges cover every shape. A sequence
    length the family refuses (spec.case_for), or that ``probe(case)`` cannot run, is left out."""
    if sequence_free(artifact.manifest.io()):  # the family's batches (images: 1, 8, 32), nothing to probe
        return tuple((int(sizes["batch"]), 0) for sizes in spec.bench_sizes(config))
    resolved = artifact.manifest.resolved_shapes()
    if resolved is not None and "batch" in resolved.axes and "sequence" in resolved.axes:
        batches, sequences = resolved.axes["batch"], resolved.axes["sequence"]
    else:
        limit = (artifact.manifest.model_config or {}).get("max_positions") or max(DEFAULT_SEQUENCES)
        batches, sequences = DEFAULT_BATCHES, tuple(min(s, limit) for s in DEFAULT_SEQUENCES)

    def runs(sequence: int) -> bool:
        try:
            case = spec.case_for({"batch": 1, "sequence": sequence}, config)
        except InputError:
            return False
        try:
            if probe is not None:
                probe(case)
        except Exception:  # noqa: BLE001 - ORT's errors share no base class; this length is left out, said below
            return False
        return True

    return tuple(product(sorted(set(batches)), [s for s in sorted(set(sequences)) if runs(s)]))


def _ranges(values: list[int]) -> list[tuple[int, int | None]]:
    """Axis ranges, one per measured value: (previous value + 1, value), the last one open above."""
    out, lo = [], 1
    for i, v in enumerate(values):
        out.append((lo, None if i == len(values) - 1 else v))
        lo = v + 1
    return out


def _preferred_tunings(plan: DispatchPlan) -> tuple[str, ...]:
    """The plan's session tunings in the order a tie goes: batch shards first where they apply (faster than
    intra-op threads for every variant measured: docs/measurements.md#batch-shards; an unsharded run must clearly
    beat them), then ORT's defaults, then the rest."""
    return tuple(sorted(plan.tunings, key=lambda t: (t != BATCH_SHARDS, t != "default")))


def _final(runner_of, screen: dict, order: tuple[str, ...], plan: DispatchPlan) -> dict:
    """The final at one shape: the screen's winner and the next fastest variants (``plan.finalists`` in all),
    each with every session tuning that applies at the shape (``runner_of(variant, tuning)``: a function that
    runs it once, or None), timed again; the same winner rule, the preference order first and the tunings in
    ``_preferred_tunings`` order. Keys are ``runner_key`` names."""
    tunings = _preferred_tunings(plan)
    kept = winner(screen, tuple(runner_key(n, t) for n in order for t in tunings), plan.margin)[0]
    by_speed = [split_key(k)[0] for k in sorted(screen, key=lambda k: screen[k]["median_ms"])]
    finalists = sorted(list(dict.fromkeys([split_key(kept)[0], *by_speed]))[:plan.finalists], key=order.index)
    runners = {}
    for name in finalists:
        for tuning in tunings:
            run = runner_of(name, tuning)
            if run is not None:
                runners[runner_key(name, tuning)] = run
    raw = time_rounds(runners, plan, final=True)
    times = {key: round_stats(t) for key, t in raw.items()}
    best, second, ratio = winner(times, tuple(runners), plan.margin)
    fastest = min(times, key=lambda k: times[k]["median_ms"])
    settled = None
    if fastest != best and leads(times[fastest], times[best], plan.margin):
        # a lead in the median that the rounds do not yet show clearly: more rounds, the two alone, decide it
        rounds = settle(runners, raw, best, fastest, plan)
        times.update({k: round_stats(raw[k]) for k in (best, fastest)})
        won = clearly_beats(times[fastest], times[best], plan.margin)
        settled = {"between": [best, fastest], "rounds": rounds, "winner": fastest if won else best}
        if won:
            best = fastest
        second, ratio = runner_up(times, best)
    variant, tuning = split_key(best)
    return {"times": times, "winner": variant, "session": tuning, "runner_up": second, "ratio": ratio,
            "settled": settled}


def measure_dispatch(artifact: Artifact, plan: DispatchPlan | None = None, *,
                     progress: _progress.Progress = _progress.SILENT,
                     leave_out: dict[str, str] | None = None) -> DispatchTable | None:
    """Time the folder's validated fp32 candidates at the shape grid; the dispatch table, or None when there
    is nothing to choose (fewer than two candidates, or a family not timed per shape: ``dispatched``). ``plan``: None
    for a ``DispatchPlan()`` made now (TORCHSHIP_DISPATCH_SECONDS read at the call). ``leave_out``: {variant: why}
    of variants the folder holds that this table must not choose (an approximate one under --exact)."""
    plan = plan if plan is not None else DispatchPlan()
    from torchship.exporters.spec import family_of, saved_config

    m = artifact.manifest
    spec = family_of(m)
    if not dispatched(spec):
        return None  # decoders, UNets and audio: one variant, as today
    order = candidate_variants()
    candidates, excluded = {}, {}
    for name in order:
        variant = m.variants.get(name)
        if variant is None:
            continue
        if name in (leave_out or {}):
            excluded[name] = leave_out[name]
            continue
        if not variant.validation or not variant.validation.passed:
            excluded[name] = "did not pass validation"
            continue
        candidates[name] = variant
    same_as = _same_files(artifact, candidates)
    for name, same in same_as.items():  # timed once, under the preferred name
        del candidates[name]
        excluded[name] = f"byte for byte the same file as {same}: timed as {same}"
    if len(candidates) < 2:
        return None
    sizes = sorted((v.size_bytes for v in candidates.values()), reverse=True)
    # every candidate's session, again for batch shards (one thread each), and the finalists' other tunings
    copies = 2 if BATCH_SHARDS in plan.tunings else 1
    others = [t for t in plan.tunings if t not in ("default", BATCH_SHARDS)]
    held = sum(sizes) * copies + sum(sizes[:plan.finalists]) * len(others)
    free = _available_bytes()
    if held > free / 2:  # all candidates' sessions are open at once (and a final's tuned ones): rounds interleave
        progress.step(f"note: no per-shape timing: the {len(candidates)} fp32 variants take {held / 2**30:.1f} GiB "
                      f"together and {free / 2**30:.1f} GiB of memory is free; the preference order decides")
        return None
    threads = _threads(plan)
    opened: dict[tuple[str, str], tuple] = {}

    def session_of(name: str, tuning: str = "default") -> tuple:
        """(session, its input names), opened on first use; a tuned one is closed after its shape's final."""
        if (name, tuning) not in opened:
            variant = candidates[name]
            session = make_session(artifact.path_of(name), threads=threads, spin="run", tuning=tuning,
                                   level=variant.options.session_level or "all",
                                   disabled_optimizers=variant.options.disabled_optimizers)
            opened[(name, tuning)] = (session, [i.name for i in session.get_inputs()])
        return opened[(name, tuning)]

    sessions = {name: session_of(name) for name in candidates}
    io = m.io()
    axes = (batch_axes(io.inputs), batch_axes(io.outputs))
    shard_pools: list[BatchShards] = []
    config = saved_config(artifact)
    first, names = next(iter(sessions.values()))

    def probe(case) -> None:  # one run of the first candidate: a length past what the graph can index fails here
        feeds = spec.sample_inputs(config, io, case, seed=0)
        first.run(None, {n: feeds[n] for n in names})

    grid = shape_grid(artifact, spec, config, probe)
    if not grid:
        return None
    shapes = []
    for i, (batch, sequence) in enumerate(grid, 1):
        case = spec.case_for({"batch": batch, **({"sequence": sequence} if sequence else {})}, config)
        progress.step(f"timing {len(candidates)} fp32 variants at {case.label()} [{i}/{len(grid)}]")
        feeds = spec.sample_inputs(config, io, case, seed=i)
        shard = BATCH_SHARDS in plan.tunings and None not in axes and splits(batch, threads)

        def runner_of(name: str, tuning: str, feeds=feeds, shard=shard):
            if tuning == BATCH_SHARDS and not shard:
                return None  # nothing to cut: a batch that does not divide among the threads, or a tensor without rows
            session, names = session_of(name, tuning)
            feed = {n: feeds[n] for n in names}
            if tuning != BATCH_SHARDS:
                return lambda: session.run(None, feed)
            shard_pools.append(BatchShards(session, threads, *axes))
            return lambda shards=shard_pools[-1]: shards.run(None, feed)

        # Batch shards change which variant is fastest (the unfused graph gains most from them), so where they
        # apply every candidate is timed both ways from the start.
        try:
            runners = {name: runner_of(name, "default") for name in sessions}
            runners.update({runner_key(name, BATCH_SHARDS): runner_of(name, BATCH_SHARDS)
                            for name in sessions if shard})
            times = {name: round_stats(t) for name, t in time_rounds(runners, plan).items()}
            final = _final(runner_of, times, order, plan)
        finally:  # the shards' threads and the tuned sessions go with their shape, also when a run fails
            while shard_pools:
                shard_pools.pop().close()
            for key in [k for k in opened if k[1] != "default"]:
                del opened[key]
        settled = final["settled"]
        shapes.append(ShapeTimes(
            batch=batch, sequence=sequence, times={k: RoundTimes.from_json(t) for k, t in times.items()},
            final={k: RoundTimes.from_json(t) for k, t in final["times"].items()}, winner=final["winner"],
            session=final["session"], runner_up=final["runner_up"], ratio=final["ratio"],
            settled=Settled(tuple(settled["between"]), settled["rounds"], settled["winner"]) if settled else None))
    del sessions, opened
    batches = _ranges(sorted({b for b, _ in grid}))
    sequences = [(0, None)] if sequence_free(io) else _ranges(sorted({s for _, s in grid}))
    by_shape = {(s.batch, s.sequence): s for s in shapes}
    ranges = [ShapeRange(batch=br, sequence=sr, variant=by_shape[(b, s)].winner, session=by_shape[(b, s)].session,
                         measured_at=(b, s))
              for (b, br), (s, sr) in product(zip(sorted({b for b, _ in grid}), batches),
                                              zip(sorted({s for _, s in grid}), sequences))]
    return DispatchTable(
        version=TABLE_VERSION,
        machine=Machine(cpu=cpu_name(), threads=threads, spin="run"),
        plan=Plan(min_rounds=plan.min_rounds, max_rounds=plan.max_rounds, seconds_per_shape=plan.seconds,
                  sample_s=plan.sample_s, margin=plan.margin, finalists=plan.finalists,
                  final_rounds=plan.final_rounds, final_max_rounds=plan.final_max_rounds,
                  tunings={t: SESSION_TUNINGS[t] if t != BATCH_SHARDS else {"shards": threads, "intra_op_threads": 1}
                           for t in plan.tunings}),
        grid="shape config" if m.resolved_shapes() is not None else "default",
        candidates={name: _candidate_record(v) for name, v in candidates.items()},
        excluded=excluded,
        same_as=same_as,  # {variant: the name its identical file was timed under}: what readers use
        shapes=tuple(shapes),
        ranges=tuple(ranges),
    )


def _same_files(artifact: Artifact, candidates: dict) -> dict[str, str]:
    """{name: earlier name} for each candidate whose file is byte for byte an earlier candidate's, with the same
    operators disabled at load (on CPU, ORT's level ``all`` adds nothing to ``extended`` on transformer graphs,
    so ``ort_all.onnx`` and ``ort_extended.onnx`` come out identical): timing both would spend a share of every
    shape's time on one graph and pick between them by noise. Only files of equal size are hashed."""
    groups: dict[tuple, list[str]] = {}
    for name, variant in candidates.items():  # preference order
        key = (artifact.path_of(name).stat().st_size, variant.options.disabled_optimizers)
        groups.setdefault(key, []).append(name)
    same = {}
    for names in (g for g in groups.values() if len(g) > 1):
        first: dict[str, str] = {}
        for name in names:
            digest = hash_file(artifact.path_of(name)).hexdigest()
            same.update({name: first[digest]} if digest in first else {})
            first.setdefault(digest, name)
    return same


def _candidate_record(variant) -> Candidate:
    """A candidate as the table keeps it; an approximate one says so, with the cosine it was judged by."""
    v = variant.validation
    if v is None:
        return Candidate(variant.file)
    return Candidate(variant.file, passed=v.passed, max_abs=v.max_abs, approximate=v.approximate,
                     min_cosine=v.min_cosine if v.approximate else None, judged_by=v.judged_by if v.approximate else None)


def _available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
