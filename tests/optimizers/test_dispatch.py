"""The measured dispatch of torchship optimize: every validated fp32 variant timed per shape on real ORT
sessions, the winner per shape range kept in the manifest, and the ort-measured predictor running the
variant the table names. No timing is asserted: which variant wins on the tiny models is the machine's."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from torchship._ort import SESSION_TUNINGS
from torchship._shards import splits
from torchship.artifact import Artifact
from torchship.dispatch_table import DispatchTable
from torchship.cli import main
from torchship.exporters.export import ExportOptions, export
from torchship.optimizers import OptimizeOptions, optimize
from torchship.optimizers.dispatch import DispatchPlan, candidate_variants, runner_key, split_key
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.shapes import load_shape_config

# Two threads whatever the worker's CPUs (tests/conftest.py gives each xdist worker one): batch 8 is then sharded.
QUICK = DispatchPlan(min_rounds=2, max_rounds=3, seconds=0.0, final_rounds=2, threads=2)


def _feeds(batch: int, sequence: int) -> dict:
    ids = np.full((batch, sequence), 5, dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.fixture(scope="module")
def measured(exported, tmp_path_factory):
    folder = shutil.copytree(exported("bert"), tmp_path_factory.mktemp("dispatch") / "bert")
    return optimize(folder, OptimizeOptions(dispatch=QUICK))


def _same_bytes(artifact, a: str, b: str) -> bool:
    return artifact.path_of(a).read_bytes() == artifact.path_of(b).read_bytes()


def test_every_candidate_is_timed_at_every_shape_and_each_range_has_a_winner(measured):
    typed = measured.manifest.dispatch
    table = typed.to_json()  # what the manifest holds
    assert list(candidate_variants()) == \
        ["optimized", "ort-all", "ort-extended", "ort-basic", "model", "optimized-onnx-attention", "optimized-mha",
         "optimized-approx"]
    # Every candidate is timed but one whose file is byte for byte an earlier one's: it is timed once, under
    # the earlier name (on CPU, ORT's level all writes the same graph as extended for BERT).
    timed = list(table["candidates"])
    assert timed == [n for n in candidate_variants() if n in timed]
    for name in candidate_variants():
        twins = [t for t in timed if t != name and _same_bytes(measured, t, name)]
        if name in timed:
            assert twins == [], f"{name} and {twins} are one file, timed twice"
        else:
            assert len(twins) == 1 and candidate_variants().index(twins[0]) < candidate_variants().index(name)
            assert table["excluded"][name] == f"byte for byte the same file as {twins[0]}: timed as {twins[0]}"
    assert len(timed) >= 7
    assert all(c["validation"]["passed"] for c in table["candidates"].values())
    # Only the approximate one says so, with the cosine it was judged by instead of eager's tolerance.
    assert [n for n, c in table["candidates"].items() if c.get("approximate")] == ["optimized-approx"]
    assert table["candidates"]["optimized-approx"]["validation"]["min_cosine"] >= 0.9999
    # The default grid, its sequences clipped to the tiny model's 128 positions.
    assert [(s["batch"], s["sequence"]) for s in table["shapes"]] == [(1, 16), (1, 128), (8, 16), (8, 128)]
    assert table["grid"] == "default" and table["machine"]["spin"] == "run"
    for shape in table["shapes"]:
        # Where the batch divides among the threads, every candidate is also timed with batch shards.
        sharded = splits(shape["batch"], table["machine"]["threads"])
        assert set(shape["times"]) == set(table["candidates"]) | (
            {runner_key(n, "batch-shards") for n in table["candidates"]} if sharded else set())
        for t in shape["times"].values():
            assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] and t["rounds"] >= QUICK.min_rounds
        # The final: the two best variants of the first timing, each with ORT's defaults and with each tuning
        # that applies: batch shards only where the batch divides among the threads.
        finalists = {split_key(k)[0] for k in shape["final"]}
        assert len(finalists) == 2 and finalists <= set(table["candidates"])
        threads = table["machine"]["threads"]
        tunings = [t for t in SESSION_TUNINGS if t != "batch-shards" or splits(shape["batch"], threads)]
        assert ("batch-shards" in tunings) == (threads in (2, 4, 8) and shape["batch"] == 8)
        assert set(shape["final"]) == {runner_key(v, t) for v in finalists for t in tunings}
        assert all(t["rounds"] >= QUICK.final_rounds for t in shape["final"].values())
        assert shape["winner"] in finalists and shape["session"] in SESSION_TUNINGS
        best = runner_key(shape["winner"], shape["session"])
        assert shape["runner_up"] in shape["final"] and shape["runner_up"] != best
        assert shape["ratio"] == round(shape["final"][shape["runner_up"]]["median_ms"]
                                       / shape["final"][best]["median_ms"], 4)
    # Ranges: one per measured shape, covering every (batch, sequence), each naming that shape's winner.
    winners = {(s["batch"], s["sequence"]): s["winner"] for s in table["shapes"]}
    sessions = {(s["batch"], s["sequence"]): s["session"] for s in table["shapes"]}
    assert [(r["batch"], r["sequence"]) for r in table["ranges"]] == [
        ([1, 1], [1, 16]), ([1, 1], [17, None]), ([2, None], [1, 16]), ([2, None], [17, None])]
    for r in table["ranges"]:
        assert r["variant"] == winners[tuple(r["measured_at"])] and r["session"] == sessions[tuple(r["measured_at"])]
    assert typed.variant_at(1, 3) == winners[(1, 16)]
    assert typed.choice(1, 3) == (winners[(1, 16)], sessions[(1, 16)])
    assert typed.variant_at(5, 100) == typed.variant_at(64, 500) == winners[(8, 128)]
    # Kept in torchship.json, as plain data.
    on_disk = json.loads((measured.folder / "torchship.json").read_text())
    assert on_disk["dispatch"] == table


def _with_ranges(artifact, ranges):
    table = DispatchTable.from_json({**artifact.manifest.dispatch.to_json(), "ranges": ranges})
    artifact.save(dataclasses.replace(artifact.manifest, dispatch=table))
    return Artifact.open(artifact.folder)


def test_the_predictor_runs_the_variant_the_table_names_for_the_shape(measured, tmp_path):
    art = Artifact.open(shutil.copytree(measured.folder, tmp_path / "bert"))
    art = _with_ranges(art, [{"batch": [1, 1], "sequence": [1, None], "variant": "ort-basic", "measured_at": [1, 16]},
                             {"batch": [2, None], "sequence": [1, None], "variant": "optimized",
                              "session": "dynamic-blocks", "measured_at": [8, 16]}])
    with create_predictor(art, "ort-measured", RuntimeOptions(threads=1)) as predictor:
        assert predictor.ran == predictor.loaded == ()  # sessions load on first use
        one = predictor.infer(_feeds(1, 12))
        assert (predictor.last_variant, predictor.last_session) == ("ort-basic", "default")
        assert predictor.loaded == ("ort-basic",)
        four = predictor.infer(_feeds(4, 12))
        assert (predictor.last_variant, predictor.last_session) == ("optimized", "dynamic-blocks")
        assert set(predictor.loaded) == {"ort-basic", "optimized"}
        # The table's session tuning reached ORT: the session runs with its config entry.
        sessions = {key: p._session.get_session_options() for key, p in predictor.variants.items() if p.active}
        assert sessions[("optimized", "dynamic-blocks")].get_session_config_entry("session.dynamic_block_base") == "2"
        with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: not set
            sessions[("ort-basic", "default")].get_session_config_entry("session.dynamic_block_base")
    assert predictor.loaded == () and predictor.ran == ("ort-basic", "optimized")
    # Batch shards: the batch cut into one part per thread, each run on a one-thread session; an uneven batch whole.
    art = _with_ranges(art, [{"batch": [1, None], "sequence": [1, None], "variant": "optimized",
                              "session": "batch-shards", "measured_at": [8, 16]}])
    with create_predictor(art, "ort-measured", RuntimeOptions(threads=2)) as predictor:
        shards = predictor.infer(_feeds(4, 12))
        assert (predictor.last_variant, predictor.last_session) == ("optimized", "batch-shards")
        sharded = predictor.variants[("optimized", "batch-shards")]
        assert sharded._shards.shards == 2 and sharded._session.get_session_options().intra_op_num_threads == 1
        assert sharded._whole is None
        predictor.infer(_feeds(3, 12))
        assert sharded._whole.get_session_options().intra_op_num_threads == 2
    np.testing.assert_allclose(shards["last_hidden_state"], four["last_hidden_state"], rtol=1e-5, atol=1e-5)
    for backend, feeds, got in (("ort-basic", _feeds(1, 12), one), ("ort-optimized", _feeds(4, 12), four)):
        with create_predictor(art, backend, RuntimeOptions(threads=1)) as alone:
            np.testing.assert_array_equal(alone.infer(feeds)["last_hidden_state"], got["last_hidden_state"])
    # One file for callers that need one: the table's choice at a shape, else the variant that won most shapes.
    assert art.measured_variant({"batch": 3, "sequence": 40}) == "optimized"
    assert art.measured_variant() in art.manifest.dispatch.candidates


def test_a_table_naming_a_variant_or_tuning_this_folder_or_torchship_lacks_is_one_line(measured, tmp_path):
    """A hand-edited table (or one a newer torchship wrote): predict says what is wrong and what remakes it."""
    for key, value, words in (("variant", "optimized-gone", "names variant 'optimized-gone'"),
                              ("session", "turbo", "names session tuning 'turbo', which this torchship does not know")):
        art = Artifact.open(shutil.copytree(measured.folder, tmp_path / key))
        art = _with_ranges(art, [{**r, key: value} for r in art.manifest.dispatch.to_json()["ranges"]])
        before = (art.folder / "torchship.json").read_bytes()
        r = CliRunner().invoke(main, ["predict", str(art.folder), "a good movie"])
        assert r.exit_code == 2 and words in r.output and f"run: torchship optimize {art.folder}" in r.output, r.output
        assert "Traceback" not in r.output and (art.folder / "torchship.json").read_bytes() == before


def test_predict_uses_the_table_and_says_which_variant_ran(measured):
    r = CliRunner().invoke(main, ["predict", str(measured.folder), "a good movie", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["backend"] == "ort-measured"
    r = CliRunner().invoke(main, ["predict", str(measured.folder), "a good movie"])
    ran = measured.manifest.dispatch.variant_at(1, 5)  # [CLS] a good movie [SEP]
    assert r.exit_code == 0 and f"(backend ort-measured ran {ran};" in r.output, r.output


def test_preset_keeps_a_table_whose_files_are_unchanged_and_without_one_runs_the_preferred_variant(measured, tmp_path):
    folder = shutil.copytree(measured.folder, tmp_path / "bert")
    art = optimize(folder, OptimizeOptions(levels=("all",), candidates="preset"))  # ort_all.onnx made again, same bytes
    assert art.manifest.dispatch == measured.manifest.dispatch
    data = json.loads((folder / "torchship.json").read_text())
    data["dispatch"] = None
    (folder / "torchship.json").write_text(json.dumps(data))
    art = Artifact.open(folder)
    assert art.measured_variant() == art.best_variant() == "optimized"
    with create_predictor(art, "ort-measured") as predictor:  # no table: the single preferred variant
        assert predictor.path.name == "model_optimized.onnx"


def test_a_run_that_makes_no_fp32_variant_keeps_the_table(measured, tmp_path):
    art = optimize(shutil.copytree(measured.folder, tmp_path / "bert"),
                   OptimizeOptions(levels=(), transformer_fusion=False, candidates="preset"))
    assert art.manifest.dispatch == measured.manifest.dispatch


def test_an_old_manifest_without_a_table_still_opens(measured, tmp_path):
    folder = shutil.copytree(measured.folder, tmp_path / "old")
    data = json.loads((folder / "torchship.json").read_text())
    del data["dispatch"]
    (folder / "torchship.json").write_text(json.dumps(data))
    art = Artifact.open(folder)
    assert art.manifest.dispatch is None and art.best_variant() == "optimized"
    r = CliRunner().invoke(main, ["predict", str(folder), "a good movie", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["backend"] == "ort-optimized", r.output


def test_the_shape_config_sets_the_grid(model_dirs, tmp_path):
    config = tmp_path / "shapes.yml"
    config.write_text("inputs:\n  input_ids: {min: [1, 4], use: [2, 24], max: [4, 64]}\n")
    out = tmp_path / "onnx"
    export(str(model_dirs("bert")), out, ExportOptions(shapes=load_shape_config(config)))
    table = optimize(out, OptimizeOptions(levels=("all",), dispatch=QUICK)).manifest.dispatch.to_json()
    assert table["grid"] == "shape config"
    assert list(table["candidates"]) == ["optimized", "ort-all", "model", "optimized-onnx-attention", "optimized-mha",
                                         "optimized-approx"]
    assert {(s["batch"], s["sequence"]) for s in table["shapes"]} == {(b, s) for b in (1, 2, 4) for s in (4, 24, 64)}


def test_decoders_get_no_table(decoder_export):
    assert Artifact.open(decoder_export).manifest.dispatch is None


def test_the_optimize_command_prints_the_table_and_refuses_a_bad_choice(measured, tmp_path):
    folder = shutil.copytree(measured.folder, tmp_path / "bert")
    r = CliRunner().invoke(main, ["optimize", str(folder), "--levels", "all", "--no-fusion"])
    assert r.exit_code == 0, r.output
    assert "Measured dispatch" in r.output and "| batch | sequence | runs |" in r.output
    excluded = Artifact.open(folder).manifest.dispatch.excluded
    assert excluded and all(f"not timed: {name} ({why})" in r.output for name, why in excluded.items())
    before = (folder / "torchship.json").read_text()
    exe = Path(sys.executable).parent / "torchship"
    proc = subprocess.run([str(exe), "optimize", str(folder), "--candidates", "fastest"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "unknown --candidates 'fastest'; use measured or preset" in errors[0], proc.stderr
    assert (folder / "torchship.json").read_text() == before
    # A timing bound that is not a number of seconds: one line, nothing changed.
    proc = subprocess.run([str(exe), "optimize", str(folder)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TORCHSHIP_DISPATCH_SECONDS": "soon"})
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "TORCHSHIP_DISPATCH_SECONDS must be a number of seconds, 0 or more; it is 'soon'" in errors[0]
    assert (folder / "torchship.json").read_text() == before


def test_bench_runs_ort_measured_and_reports_the_file_per_shape(measured):
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan

    plan = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
    report = run_benchmark(measured.folder, BenchOptions(backends=("ort", "ort-measured"), shapes=((1, 8), (8, 100)),
                                                         threads=1, plan=plan))
    assert {m.backend for m in report.measurements} == {"ort", "ort-measured"}
    table, variants = measured.manifest.dispatch, measured.manifest.variants

    def ran(batch, sequence):  # the file, and the session tuning where it is not ORT's default
        variant, tuning = table.choice(batch, sequence)
        return variants[variant].file + ("" if tuning == "default" else f" ({tuning})")

    assert report.variant_files["ort-measured"] == f"batch 1 x seq 8: {ran(1, 8)}; batch 8 x seq 100: {ran(8, 100)}"


def test_a_length_the_graph_cannot_run_is_left_out_of_the_grid(exported, tmp_path):
    # Tiny MPNet: 128 positions in its config, but its position ids start after the padding index, so a
    # 128-token input indexes past the table; the grid keeps only the lengths that run.
    folder = shutil.copytree(exported("mpnet"), tmp_path / "mpnet")
    table = optimize(folder, OptimizeOptions(levels=("all",), dispatch=QUICK)).manifest.dispatch.to_json()
    assert table["shapes"] and all(s["sequence"] < 128 for s in table["shapes"])
    assert {s["batch"] for s in table["shapes"]} == {1, 8}


def _rounds(*ms):
    return {"median_ms": float(np.median(ms)), "p10_ms": min(ms), "p90_ms": max(ms), "rounds_ms": list(ms)}


def test_the_winner_rule_keeps_the_preferred_variant_unless_the_fastest_clearly_beats_it():
    from torchship.benchmarks.timing import winner as _winner

    order = ("optimized", "ort-all", "model")
    # A clear win (5% faster, in every round) displaces the preferred variant.
    assert _winner({"optimized": _rounds(10.0, 10.2, 9.9), "ort-all": _rounds(9.5, 9.6, 9.4)}, order, 0.01) == \
        ("ort-all", "optimized", round(10.0 / 9.5, 4))
    # Within the margin it stays; and where a median win comes from rounds in which the other was slowed (a busy
    # machine: 3 of 5 rounds won, no more than chance), it stays too.
    assert _winner({"optimized": _rounds(10.0, 10.2, 9.9), "ort-all": _rounds(9.95, 9.9, 10.0)},
                   order, 0.01)[0] == "optimized"
    busy = {"optimized": _rounds(10.0, 10.2, 9.9, 9.0, 9.1), "ort-all": _rounds(9.0, 10.5, 10.6, 8.9, 9.05)}
    assert _winner(busy, order, 0.01)[0] == "optimized"
    # Not clearly beaten: the earliest such candidate in the preference order, here ort-all over model.
    times = {"optimized": _rounds(12.0, 12.1, 11.9), "ort-all": _rounds(10.05, 10.1, 10.0),
             "model": _rounds(10.0, 10.1, 9.95)}
    assert _winner(times, order, 0.01) == ("ort-all", "model", round(10.0 / 10.05, 4))


def test_with_per_round_times_a_win_must_show_in_clearly_more_than_half_the_rounds():
    from torchship.benchmarks.timing import winner as _winner

    order = ("optimized", "optimized-approx")
    # 5% faster in the median and in 5 of 6 rounds: it wins although its p90 (one slow round) is above the
    # preferred variant's median.
    steady = _rounds(10.0, 10.1, 10.0, 9.9, 10.0, 10.1)
    approx = _rounds(9.5, 9.5, 9.4, 9.6, 11.0, 9.5)
    assert _winner({"optimized": steady, "optimized-approx": approx}, order, 0.01)[0] == "optimized-approx"
    # A median win that shows in only half the rounds is noise: the preferred variant stays.
    mixed = _rounds(9.0, 10.5, 9.0, 10.5, 9.0, 10.5)
    assert _winner({"optimized": steady, "optimized-approx": mixed}, order, 0.01)[0] == "optimized"
    # With many rounds a smaller share is enough: 2% faster in the median, winning 60 of 100 rounds is clear,
    # 55 of 100 is not.
    for won, winner in ((60, "optimized-approx"), (55, "optimized")):
        times = {"optimized": _rounds(*[10.0] * 100), "optimized-approx": _rounds(*[9.8] * won + [10.2] * (100 - won))}
        assert _winner(times, order, 0.01)[0] == winner


def test_a_lead_the_rounds_do_not_yet_show_is_settled_head_to_head():
    """The final's fastest led the kept runner in the median but won only 1 of 3 rounds: the two run on, in
    turn, until the sign test says it (a real 20% lead) or the bound is reached (no real lead)."""
    import time

    from torchship.benchmarks.timing import clear_wins, settle

    runners = {"kept": lambda: time.sleep(0.0024), "fast": lambda: time.sleep(0.002),
               "slower": lambda: time.sleep(0.0028)}
    plan = DispatchPlan(seconds=0.1, settle_rounds=30, warmup=0)
    raw = {"kept": [0.0024, 0.0019, 0.0024], "fast": [0.002, 0.0025, 0.0026]}
    assert not clear_wins({"rounds_ms": raw["fast"]}, {"rounds_ms": raw["kept"]})
    added = settle(runners, raw, "kept", "fast", plan)
    assert 0 < added < 27 and len(raw["kept"]) == len(raw["fast"]) == 3 + added
    assert clear_wins({"rounds_ms": raw["fast"]}, {"rounds_ms": raw["kept"]})
    # A lead that was noise (the other is in fact slower): no clear win, so the rounds stop at the bound.
    raw = {"kept": [0.0024, 0.0024, 0.0024], "slower": [0.0023, 0.0025, 0.0023]}
    added = settle(runners, raw, "kept", "slower", DispatchPlan(seconds=10, settle_rounds=12, warmup=0))
    assert added == 9 and len(raw["kept"]) == 12


def test_the_approximate_candidate_is_the_fused_model_with_fastgelu_judged_by_cosine(measured):
    import onnx

    from torchship.optimizers.approximate import MIN_COSINE

    v, fused = measured.manifest.variants["optimized-approx"], measured.manifest.variants["optimized"]
    assert v.file == "model_optimized_approx.onnx" and v.stage == "transformer-fusion"
    exact_ops = [n.op_type for n in onnx.load(str(measured.folder / fused.file)).graph.node]
    ops = [n.op_type for n in onnx.load(str(measured.folder / v.file)).graph.node]
    gelus = exact_ops.count("Gelu") + exact_ops.count("BiasGelu")
    assert gelus and v.options.extra["approximated_nodes"] == gelus == ops.count("FastGelu")
    assert "Gelu" not in ops and "BiasGelu" not in ops and len(ops) == len(exact_ops)
    val = v.validation
    assert val.passed and val.min_cosine >= MIN_COSINE and "FastGelu" in val.approximate
    assert 0 < val.max_abs and 0 < val.extra["max_abs_vs_eager"] and "cosine" in val.judged_by
    assert any("approximate" in note for note in v.notes)
    assert measured.best_variant() == "optimized"  # never picked by preference, only by the measured table
    # The outputs really differ from the exact fused model's, by less than the cosine bar.
    feeds = _feeds(2, 16)
    with create_predictor(measured, "ort-optimized-approx", RuntimeOptions(threads=1)) as approx, \
            create_predictor(measured, "ort-optimized", RuntimeOptions(threads=1)) as exact:
        a, e = approx.infer(feeds)["last_hidden_state"], exact.infer(feeds)["last_hidden_state"]
    assert not np.array_equal(a, e)
    cos = (a * e).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(e, axis=-1)
    assert cos.min() >= MIN_COSINE


def test_the_table_may_choose_the_approximate_variant_and_the_report_says_so(measured, tmp_path):
    from torchship.benchmarks.dispatch_report import all_times_markdown, dispatch_markdown

    art = Artifact.open(shutil.copytree(measured.folder, tmp_path / "bert"))
    data = art.manifest.dispatch.to_json()
    shapes = [{**s, "winner": "optimized-approx" if (s["batch"], s["sequence"]) == (1, 16) else "ort-all",
               "session": "default"} for s in data["shapes"]]
    table = DispatchTable.from_json({**data, "shapes": shapes})
    art.save(dataclasses.replace(art.manifest, dispatch=table))
    art = _with_ranges(art, [{"batch": [1, 1], "sequence": [1, 16], "variant": "optimized-approx",
                              "measured_at": [1, 16]},
                             {"batch": [1, None], "sequence": [1, None], "variant": "ort-all",
                              "measured_at": [8, 128]}])
    with create_predictor(art, "ort-measured", RuntimeOptions(threads=1)) as predictor:
        predictor.infer(_feeds(1, 12))
        assert predictor.last_variant == "optimized-approx"
        predictor.infer(_feeds(1, 40))
        assert predictor.last_variant == "ort-all"
    text = dispatch_markdown(art.manifest.dispatch)
    assert "| ort-optimized-approx (approximate) | b1 s16 |" in text
    assert "ort-optimized-approx is approximate: GELU as its tanh approximation (FastGelu)" in text
    assert "**The table chose it at b1 s16**" in text and "--exact" in text
    assert "ort-optimized-approx (approximate)" in all_times_markdown(art.manifest.dispatch).splitlines()[2]


def test_exact_leaves_the_approximate_variant_out_of_the_table_and_keeps_an_earlier_one(measured, tmp_path):
    folder = shutil.copytree(measured.folder, tmp_path / "bert")
    r = CliRunner().invoke(main, ["optimize", str(folder), "--levels", "all", "--exact"])
    assert r.exit_code == 0, r.output
    m = Artifact.open(folder).manifest
    assert "optimized-approx" in m.variants and (folder / m.variants["optimized-approx"].file).is_file()
    assert m.dispatch.excluded["optimized-approx"] == "left out: --exact"
    assert "optimized-approx" not in m.dispatch.candidates and "(approximate)" not in r.output.split("Measured")[-1]
    # A folder optimized exactly gets it back from a plain measured run.
    art = optimize(folder, OptimizeOptions(levels=(), dispatch=QUICK))
    assert "optimized-approx" in art.manifest.variants and "optimized-approx" in art.manifest.dispatch.candidates


def test_nothing_to_approximate_without_a_fused_gelu(measured, tmp_path):
    from torchship.errors import ArtifactError
    from torchship.optimizers.approximate import approximate_gelu

    with pytest.raises(ArtifactError, match="no fused GELU"):
        approximate_gelu(measured.folder / "model.onnx", tmp_path / "x.onnx", external=False)
    assert not (tmp_path / "x.onnx").exists()


def test_the_default_plan_reads_the_timing_bound_when_it_is_made_not_at_import(measured, monkeypatch):
    from torchship.optimizers import dispatch
    from torchship.optimizers.dispatch import measure_dispatch

    import inspect

    for seconds in ("0.3", "7"):
        monkeypatch.setenv("TORCHSHIP_DISPATCH_SECONDS", seconds)
        assert DispatchPlan().seconds == OptimizeOptions().dispatch.seconds == float(seconds)
    # no default argument holds a plan made at import
    assert inspect.signature(optimize).parameters["options"].default is None
    assert inspect.signature(measure_dispatch).parameters["plan"].default is None

    class Seen(Exception):
        pass

    def first_rounds(runners, plan, final=False):  # measure_dispatch's default plan, as the engine gets it
        raise Seen(plan.seconds)

    monkeypatch.setattr(dispatch, "time_rounds", first_rounds)
    monkeypatch.setenv("TORCHSHIP_DISPATCH_SECONDS", "0.25")
    with pytest.raises(Seen) as seen:
        measure_dispatch(measured)
    assert seen.value.args == (0.25,)
