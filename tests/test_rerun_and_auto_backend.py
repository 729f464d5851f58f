"""Issue 27, round two: a re-run of optimize keeps work, one notion of a torchship folder, --backend auto runs what
was measured fastest, small manifests, one copy of identical files, unused initializers gone, flags refused alike."""

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from torchship.artifact import Artifact
from torchship.benchmarks.dispatch_report import all_times_markdown
from torchship.dispatch_table import DispatchTable
from torchship.benchmarks.timing import TimingPlan, cpu_name
from torchship.cli import main
from torchship.optimizers import OptimizeOptions, optimize
from torchship.optimizers.quantize import QuantizeOptions, quantize
from torchship.optimizers.rerun import ROUNDS_FILE
from torchship.runtimes.auto_backend import choose

QUICK = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
KERNELS_AND_APPROX = ("optimized-onnx-attention", "optimized-mha", "optimized-approx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def measured(exported, tmp_path):
    """A copy of the tiny BERT after a full optimize (every candidate made, the dispatch table measured)."""
    dst = tmp_path / "bert"
    shutil.copytree(exported("bert", optimized=True), dst)
    assert all(n in Artifact.open(dst).manifest.variants for n in KERNELS_AND_APPROX)
    return dst


def test_a_narrower_rerun_keeps_the_variants_and_the_table_it_did_not_redo(measured):
    before = Artifact.open(measured).manifest
    r = invoke("optimize", measured, "--candidates", "preset", "--no-fusion")
    assert r.exit_code == 0, r.output
    after = Artifact.open(measured).manifest
    assert all(n in after.variants and n not in after.skipped for n in KERNELS_AND_APPROX)
    assert all((measured / after.variants[n].file).is_file() for n in after.variants)
    assert after.dispatch == before.dispatch and "kept the measured dispatch table" in r.output
    r = invoke("predict", measured, "--backend", "ort-optimized-mha", "a sentence")
    assert r.exit_code == 0, r.output


def test_an_exact_rerun_keeps_the_approximate_file_but_measures_a_table_without_it(measured):
    r = invoke("optimize", measured, "--exact", "--candidates", "preset", "--no-fusion")
    assert r.exit_code == 0, r.output
    after = Artifact.open(measured).manifest
    assert "optimized-approx" in after.variants and (measured / after.variants["optimized-approx"].file).is_file()
    table = after.dispatch.to_json()
    assert "measuring the dispatch table again" in r.output
    assert "optimized-approx" not in table["candidates"]
    assert table["excluded"]["optimized-approx"] == "left out: --exact"
    assert all(s["winner"] != "optimized-approx" for s in table["shapes"])
    assert all(rg["variant"] != "optimized-approx" for rg in table["ranges"])


def test_a_rerun_that_changes_a_timed_file_measures_the_table_again(measured):
    before = Artifact.open(measured).manifest.dispatch
    shutil.copyfile(measured / "model.onnx", measured / "ort_basic.onnx")  # not what optimize writes for basic
    r = invoke("optimize", measured, "--levels", "basic", "--no-fusion", "--candidates", "preset")
    assert r.exit_code == 0, r.output
    assert "measuring the dispatch table again" in r.output and "ort-basic" in r.output
    table = Artifact.open(measured).manifest.dispatch
    assert table is not None and table.shapes != before.shapes


def test_manifest_keeps_statistics_and_a_side_file_keeps_the_rounds(measured):
    text = (measured / "torchship.json").read_text()
    assert "rounds_ms" not in text
    table = json.loads(text)["dispatch"]
    rounds = json.loads((measured / table["rounds_file"]).read_text())
    shape = table["shapes"][0]
    key = f"b{shape['batch']} s{shape['sequence']}"
    assert len(rounds[key]["times"][shape["winner"]]) == shape["times"][shape["winner"]]["rounds"]
    report = all_times_markdown(DispatchTable.from_json(table))
    assert report.startswith("Screen medians") and "**" in report and "→" in report
    assert table["rounds_file"] == ROUNDS_FILE


def test_identical_variant_files_are_one_copy_on_disk(measured):
    r = invoke("optimize", measured, "--no-fusion", "--candidates", "preset")  # copytree made separate copies
    assert r.exit_code == 0, r.output
    files = {}
    for v in Artifact.open(measured).manifest.variants.values():
        path = measured / v.file
        files.setdefault(path.read_bytes(), set()).add(path.stat().st_ino)
    assert all(len(inodes) == 1 for inodes in files.values()), "byte-identical variant files kept as copies"
    assert (measured / "ort_all.onnx").samefile(measured / "ort_extended.onnx")


def _unused_initializers(path):
    model = onnx.load(str(path))
    used = {o.name for o in model.graph.output}

    def walk(graph):
        for node in graph.node:
            used.update(node.input)
            for a in node.attribute:
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(g)
    walk(model.graph)
    return [i.name for i in model.graph.initializer if i.name not in used]


def test_sentence_embedding_export_gets_the_onnx_attention_candidate_without_unused_initializers(tmp_path):
    from tiny import save_sentence_transformers_dir
    from torchship.exporters.export import ExportOptions, export

    out = tmp_path / "st"
    export(str(save_sentence_transformers_dir(tmp_path / "src")), out, ExportOptions(task="sentence-embedding"))
    assert onnx.load(str(out / "model.onnx")).opset_import[0].version < 18  # the export's reductions: axes attribute
    art = optimize(out, OptimizeOptions(levels=(), dispatch=None))
    assert "optimized-onnx-attention" in art.manifest.variants, art.manifest.skipped.get("optimized-onnx-attention")
    assert art.manifest.variants["optimized-onnx-attention"].validation.passed
    for name in ("optimized-onnx-attention", "optimized-mha"):
        assert _unused_initializers(out / art.manifest.variants[name].file) == []


def test_an_auto_output_folder_is_a_torchship_folder_for_every_command(exported, tmp_path):
    auto = tmp_path / "auto"
    shutil.copytree(exported("bert"), auto / "model")
    (auto / "summary.json").write_text(json.dumps({"chosen": "ort"}))
    r = invoke("predict", auto, "a sentence")
    assert r.exit_code == 0, r.output
    assert "backend auto: ort (chosen by torchship auto" in r.output
    r = invoke("bench", auto, "--backends", "ort", "--batch-sizes", "1", "--seq-lens", "8", "--min-seconds", "0",
               "--min-iterations", "2", "--warmup", "0", "--report", tmp_path / "report")
    assert r.exit_code == 0, r.output
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    lines = set()
    for cmd in (["predict", stranger, "x"], ["bench", stranger], ["optimize", stranger], ["quantize", stranger],
                ["generate", stranger, "x"], ["triton", stranger, "--output", tmp_path / "repo"]):
        r = invoke(*cmd)
        assert r.exit_code == 2 and "Traceback" not in r.output, (cmd, r.output)
        lines.add(r.output.strip().splitlines()[-1])
    assert len(lines) == 1 and "torchship export or torchship auto wrote" in lines.pop()
    assert sorted(p.name for p in stranger.iterdir()) == []


def test_backend_auto_runs_the_fastest_variant_judged_within_budget_and_says_why(measured):
    art = quantize(measured, QuantizeOptions(budget=0.9, timing=QUICK))
    int8 = art.manifest.variants["int8"]
    choice = choose(art)
    shape = int8.options.shape  # "batch 1 x seq 128"
    batch, sequence = (int(w) for w in shape.replace("batch ", "").replace("seq ", "").split(" x "))
    from torchship.runtimes.auto_backend import _fp32_speedup

    fp32 = _fp32_speedup(art.manifest.dispatch, batch, sequence)
    expected = "ort-int8" if int8.options.speedup_vs_fp32 > (fp32 if fp32 is not None else 1.0) else "ort-measured"
    assert choice.backend == expected
    assert f"{int8.options.speedup_vs_fp32:.2f}x" in choice.why and f"{batch}x{sequence}" in choice.why
    r = invoke("predict", measured, "a sentence")
    assert r.exit_code == 0, r.output
    assert f"backend auto: {expected} (" in r.output and f"(backend {expected}" in r.output
    # timed on another CPU: auto passes it over, and says so
    manifest = json.loads((measured / "torchship.json").read_text())
    manifest["variants"]["int8"]["options"]["machine"] = {"cpu": "another CPU"}
    (measured / "torchship.json").write_text(json.dumps(manifest))
    other = choose(Artifact.open(measured), cpu=cpu_name())
    assert other.backend == "ort-measured" and "ort-int8 was timed on another CPU" in other.why
    # fixed numbers on this CPU: int8 runs only where it was timed faster than the measured fp32 dispatch
    manifest["variants"]["int8"]["options"]["machine"] = {"cpu": cpu_name()}
    for speedup, want in ((50.0, "ort-int8"), (0.5, "ort-measured")):
        manifest["variants"]["int8"]["options"]["speedup_vs_fp32"] = speedup
        (measured / "torchship.json").write_text(json.dumps(manifest))
        assert choose(Artifact.open(measured), cpu=cpu_name()).backend == want, speedup


def test_backend_auto_runs_a_weight_only_decoder_variant_timed_faster_on_this_machine(decoder_export, tmp_path):
    from torchship.optimizers.weight_only import WeightOnlyOptions, weight_only

    folder = tmp_path / "gpt2"
    shutil.copytree(decoder_export, folder)
    art = weight_only(folder, WeightOnlyOptions(bits=8, block_size=16))
    timing = art.manifest.variants["wo-int8"].options.timing
    assert timing.cpu == cpu_name() and timing.speedup_vs_fp32 > 0
    assert timing.fp32 in ("model", "optimized") and set(timing.extra["median_ms"]) >= {"model", "quantized"}
    manifest = json.loads((folder / "torchship.json").read_text())
    wo = manifest["variants"]["wo-int8"]
    wo["validation"]["warning"] = None
    for speedup, want in ((3.0, "ort-wo-int8"), (0.8, "ort-optimized")):
        wo["options"]["timing"]["speedup_vs_fp32"] = speedup
        (folder / "torchship.json").write_text(json.dumps(manifest))
        assert choose(Artifact.open(folder), cpu=cpu_name()).backend == want, speedup
    wo["options"]["timing"]["speedup_vs_fp32"] = 3.0
    wo["validation"]["warning"] = "far from fp32: ..."
    (folder / "torchship.json").write_text(json.dumps(manifest))
    far = choose(Artifact.open(folder), cpu=cpu_name())
    assert far.backend == "ort-optimized" and "ort-wo-int8 is far from fp32" in far.why
    wo["validation"]["warning"] = None
    (folder / "torchship.json").write_text(json.dumps(manifest))
    r = invoke("generate", folder, "hello world", "--max-new-tokens", "2")
    assert r.exit_code == 0, r.output
    assert "backend auto: ort-wo-int8 (quantize timed it 3.00x" in r.output


def test_bench_times_every_variant_in_the_folder_by_default(measured, tmp_path):
    quantize(measured, QuantizeOptions(budget=0.9, timing=QUICK, per_channel=(True,), sources=("model",)))
    r = invoke("bench", measured, "--batch-sizes", "1", "--seq-lens", "8", "--min-seconds", "0",
               "--min-iterations", "2", "--warmup", "0", "--report", tmp_path / "report")
    assert r.exit_code == 0, r.output
    ran = json.loads((tmp_path / "report" / "results.json").read_text())["settings"]["backends"]
    assert {"torch", "ort", "ort-optimized", "ort-int8", "ort-optimized-mha", "ort-measured"} <= set(ran)


def test_flags_for_another_task_are_refused_alike(exported):
    folder = exported("bert")
    for flag in (["--aggregation", "max"], ["--question", "who?"]):
        r = invoke("predict", folder, *flag, "a sentence")
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert f"{flag[0]} is for" in r.output and f"drop {flag[0]}" in r.output
