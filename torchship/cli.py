"""Thin click commands: flags -> a frozen options object -> one library call."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from torchship import options as o
from torchship._progress import Progress
from torchship.errors import TorchshipError

_PROGRESS = Progress(step=lambda text: click.echo(f"torchship: {text}", err=True))


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars, hub retries, deprecation notes) off the user's terminal."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    for name in ("transformers", "huggingface_hub", "torch.onnx", "onnxruntime", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    logging.getLogger("diffusers").setLevel(logging.ERROR)


def friendly_errors(fn):
    """Turn torchship errors into one line on stderr and their exit code; bugs keep the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TorchshipError as exc:
            click.echo(f"torchship: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("torchship: interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="torchship")
def main():
    """torchship: PyTorch / Hugging Face models to validated, optimized ONNX, with a latency report."""
    _quiet_libraries()


def _export_options(task, exporter, opset, attn_implementation, atol, allow_pickle, trust_remote_code, revision,
                    shape_config, external_data, kind=None):
    from torchship.exporters.export import ExportOptions
    from torchship.shapes import load_shape_config

    return ExportOptions(task=task, exporter=exporter, opset=opset, attn_implementation=attn_implementation,
                         atol=atol, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         revision=revision, kind=kind, external_data=external_data,
                         shapes=load_shape_config(shape_config) if shape_config else None)


def _export_params(fn):
    for deco in reversed((o.model, o.output, o.task, o.exporter, o.opset, o.attn, o.atol, o.shape_config,
                          o.external_data, o.allow_pickle, o.trust_remote_code, o.revision)):
        fn = deco(fn)
    return fn


def _do_export(model, output, optimize_after, **flags):
    from torchship.exporters.export import export

    options = _export_options(**flags)  # a bad shape config fails here, before any loading
    artifact = export(model, output, options, progress=_PROGRESS)
    if optimize_after:
        from torchship.optimizers import optimize

        artifact = optimize(output, progress=_PROGRESS)
    _print_artifact(artifact)


@main.command("export")
@_export_params
@click.option("--optimize/--no-optimize", "optimize_after", default=False,
              help="Also run torchship optimize on the folder.")
@friendly_errors
def export_cmd(model, output, optimize_after, **flags):
    """Export a checkpoint to ONNX, validated against eager PyTorch."""
    _do_export(model, output, optimize_after, **flags)


def _family_export_command(name: str, kind: str, doc: str):
    """A console script that exports one kind of family (export-bert, export-gpt2) and optimizes."""

    @click.command(name, help=doc, context_settings={"help_option_names": ["-h", "--help"]})
    @_export_params
    @click.option("--optimize/--no-optimize", "optimize_after", default=True, show_default=True,
                  help="Also save ORT graph levels and the transformer-fused model.")
    @friendly_errors
    def command(model, output, optimize_after, **flags):
        _quiet_libraries()
        _do_export(model, output, optimize_after, kind=kind, **flags)

    return command


export_bert = _family_export_command(
    "export-bert", "encoder",
    "Export a BERT-like encoder (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM) to ONNX, validated and optimized.")
export_gpt2 = _family_export_command(
    "export-gpt2", "decoder",
    "Export a GPT-2-like decoder with its KV cache to ONNX (one model for prompt and decode steps).")


export_unet = _family_export_command(
    "export-unet", "unet",
    "Export a diffusers UNet2DConditionModel (Stable Diffusion, inpainting) to ONNX, validated and optimized. "
    "Weights over 1 GiB go to model.onnx.data beside the graph. Needs torchship[diffusers].")


def export_bert_main():
    export_bert()


def export_gpt2_main():
    export_gpt2()


def export_unet_main():
    export_unet()


@main.command("optimize")
@click.argument("folder", type=click.Path())
@o.levels
@o.no_fusion
@o.atol
@click.option("--fp16", is_flag=True,
              help="Also write model_fp16.onnx for GPU targets: fp16 weights and compute, fp32 inputs and outputs, "
                   "nodes whose fp32 activations come near the fp16 range kept in fp32, checked for NaN/inf.")
@click.option("--fp16-block", default=None, metavar="OPS",
              help="Op types to keep in fp32 in the fp16 model, comma-separated, beside ONNX Runtime's default list.")
@click.option("--fp16-budget", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.999, show_default=True,
              help="Accuracy floor of the fp16 model against the fp32 one (same metric as quantize --budget).")
@click.option("--openvino", is_flag=True,
              help="Also write OpenVINO IR: openvino/ (fp32) and openvino_fp16/ (fp16 weights). "
                   "Needs torchship[openvino].")
@friendly_errors
def optimize_cmd(folder, levels, no_fusion, atol, fp16, fp16_block, fp16_budget, openvino):
    """Add ORT graph-level and transformer-fused variants to an exported FOLDER, each validated."""
    from torchship.optimizers import OptimizeOptions, optimize

    names = tuple(lv.strip() for lv in levels.split(",") if lv.strip())
    if openvino:
        from torchship.runtimes.openvino import require_openvino

        require_openvino()  # before any variant is made
    artifact = optimize(folder, OptimizeOptions(levels=names, transformer_fusion=not no_fusion, atol=atol, fp16=fp16,
                                                fp16_block=_split(fp16_block) or (), fp16_budget=fp16_budget,
                                                openvino=openvino),
                        progress=_PROGRESS)
    _print_artifact(artifact)


@main.command("tensorrt")
@click.argument("folder", type=click.Path())
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="int8 builds from the folder's static int8 (QDQ) variant, with fp16 where TensorRT prefers it.")
@o.shape_config
@click.option("--min-shapes", default=None, help="trtexec style: input_ids:1x1,attention_mask:1x1")
@click.option("--opt-shapes", default=None, help="The shapes TensorRT tunes for, e.g. input_ids:1x128,...")
@click.option("--max-shapes", default=None, help="The largest shapes the engine accepts.")
@friendly_errors
def tensorrt_cmd(folder, precision, shape_config, min_shapes, opt_shapes, max_shapes):
    """Build (or find in FOLDER/tensorrt/) a TensorRT engine for FOLDER's model on this GPU.

    Profiles come from --config, else from --min/--opt/--max-shapes, else the config kept at export, else
    batch and sequence from 1 up to the benchmark defaults. Engines are cached by model digest, shapes,
    precision, GPU and TensorRT version; a timing cache makes rebuilds faster. Needs torchship[tensorrt]
    and an NVIDIA GPU."""
    from torchship.artifact import Artifact
    from torchship.exporters.spec import EMPTY_OK_AXES
    from torchship.runtimes.tensorrt import (EngineCache, artifact_profiles, build_engine, profiles_from_shapes,
                                             require_tensorrt, shape_config_from_flags)
    from torchship.shapes import load_shape_config, resolve

    artifact = Artifact.open(folder)
    io = artifact.manifest.io()
    if shape_config:
        profiles = profiles_from_shapes(resolve(load_shape_config(shape_config), io, empty_ok_axes=EMPTY_OK_AXES), io)
    elif min_shapes or opt_shapes or max_shapes:
        config = shape_config_from_flags(min_shapes, opt_shapes, max_shapes)
        profiles = profiles_from_shapes(resolve(config, io, empty_ok_axes=EMPTY_OK_AXES), io)
    else:
        profiles = artifact_profiles(artifact)
    flags = {"fp32": (), "fp16": ("fp16",), "int8": ("fp16", "int8")}[precision]
    source = artifact.path_of("int8") if precision == "int8" else artifact.path_of("model")
    require_tensorrt()
    built = build_engine(source, profiles, precision=flags, cache=EngineCache.beside(artifact.folder),
                         progress=_PROGRESS)
    click.echo(f"{built.path} ({'from cache' if built.from_cache else f'built in {built.seconds:.0f} s'}; "
               + ", ".join(f"{p.name} {list(p.min)}..{list(p.max)} opt {list(p.opt)}" for p in profiles) + ")")


def _choices(value: str, *, what: str) -> tuple[bool, ...]:
    return {"yes": (True,), "no": (False,), "both": (True, False)}[value]


@main.command("quantize")
@click.argument("folder", type=click.Path())
@click.option("--int8", "int8", is_flag=True, default=True,
              help="Make an int8 variant (the default and, for now, the only precision quantize makes).")
@click.option("--method", type=click.Choice(["auto", "dynamic", "static", "both"]), default="auto", show_default=True,
              help="auto: dynamic, plus static when --calibration is given.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Calibration data for static int8: a text file (one text per line) or an .npz with one array "
                   "per model input (samples on the first axis).")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--per-channel", type=click.Choice(["both", "yes", "no"]), default="both", show_default=True,
              help="Per-channel weight scales; 'both' tries each and keeps the better by measurement.")
@click.option("--reduce-range", type=click.Choice(["no", "yes", "both"]), default="no", show_default=True,
              help="7-bit weights (avoids saturation in the int8 kernels of CPUs without VNNI).")
@click.option("--from", "sources", default=None,
              help="Variants to quantize, comma-separated: model (the export), optimized (transformer-fused), "
                   "optimized-ln (fused, but residual Add + LayerNorm unfused). Default: all that apply.")
@click.option("--op-types", default=None, help="Op types to quantize, comma-separated (e.g. MatMul,Attention); "
                                               "default: ONNX Runtime's for the method.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave nodes whose names match PATTERN (fnmatch, e.g. '*layer.5*') in fp32; repeatable.")
@o.budget
@o.eval_texts
@o.threads
@friendly_errors
def quantize_cmd(folder, int8, method, calibration, calibration_method, per_channel, reduce_range, sources,
                 op_types, exclude, budget, eval_texts, threads):
    """Make an int8 variant of FOLDER: try several quantizations, keep the fastest within the accuracy budget."""
    from torchship.optimizers.quantize import QuantizeOptions, quantize

    methods = {"auto": ("dynamic", "static") if calibration else ("dynamic",), "dynamic": ("dynamic",),
               "static": ("static",), "both": ("dynamic", "static")}[method]
    opts = QuantizeOptions(
        methods=methods, per_channel=_choices(per_channel, what="--per-channel"),
        reduce_range=_choices(reduce_range, what="--reduce-range"),
        sources=_split(sources), op_types=_split(op_types), exclude=tuple(exclude), calibration=calibration,
        calibration_method=calibration_method, eval_texts=eval_texts, budget=budget, threads=threads)
    try:
        artifact = quantize(folder, opts, progress=_PROGRESS)
    finally:
        _print_candidates(folder)
    v = artifact.manifest.variants["int8"]
    click.echo(f"kept {v.options['name']} as {artifact.folder / v.file} ({v.size_bytes / 1e6:.1f} MB, "
               f"{v.validation['metric']} {v.validation['mean']:.4f}, {v.options['speedup_vs_fp32']:.2f}x the fp32 "
               f"export at {v.options['shape']})")


def _split(text: str | None) -> tuple[str, ...] | None:
    items = tuple(t.strip() for t in (text or "").split(",") if t.strip())
    return items or None


def _print_candidates(folder) -> None:
    from torchship.artifact import Artifact

    try:
        q = Artifact.open(folder).manifest.quantization
    except TorchshipError:
        return
    if not q:
        return
    click.echo("| candidate | accuracy mean | min | p50 ms | vs fp32 | kept |")
    click.echo("|---|---:|---:|---:|---:|---|")
    for c in q["candidates"]:
        acc = c["accuracy"] or {}
        mean = f"{acc['mean']:.4f}" if acc else "-"
        low = f"{acc['min']:.4f}" if acc else "-"
        p50 = f"{c['p50_ms']:.2f}" if c.get("p50_ms") else "-"
        ratio = f"{c['speedup_vs_fp32']:.2f}x" if c.get("speedup_vs_fp32") else "-"
        kept = ("yes" if c["name"] == q["chosen"] else c["error"] if c["error"]
                else "no: slower" if c["passed"] else "no: below budget")
        click.echo(f"| {c['name']} | {mean} | {low} | {p50} | {ratio} | {kept} |")


def _bench_options(backends, threads, min_seconds, warmup, min_iterations, ort_spin, reference_model):
    from dataclasses import replace

    from torchship.benchmarks.run import BenchOptions, default_threads
    from torchship.benchmarks.timing import TimingPlan
    from torchship.runtimes import parse_backends

    plan = replace(TimingPlan(), min_seconds=min_seconds, warmup=warmup, min_iterations=min_iterations,
                   block=min(TimingPlan().block, min_iterations))
    return BenchOptions(backends=parse_backends(backends),
                        threads=default_threads() if threads is None else threads,
                        spin=ort_spin, plan=plan, reference_model=reference_model)


@main.command("bench")
@click.argument("folder", type=click.Path())
@o.backends
@o.batch_sizes
@o.seq_lens
@o.shape_config
@o.threads
@o.min_seconds
@o.warmup
@o.min_iterations
@o.spin
@o.reference_model
@o.report_dir
@o.prompt_length
@friendly_errors
def bench_cmd(folder, report_dir, prompt_length, batch_sizes, seq_lens, shape_config, **flags):
    """Benchmark eager PyTorch against ONNX Runtime variants of FOLDER; writes JSON, Markdown and PNG.

    Encoders: latency per batch size and sequence length. UNets: one denoising step at the shape
    config's use shape (or the model's native latent size, 77 tokens). Decoders: prompt (prefill)
    latency at --prompt-length, and one decode step with that much past, per batch size.
    """
    from dataclasses import replace

    from torchship.artifact import Artifact
    from torchship.benchmarks.report import markdown_table, write_report
    from torchship.benchmarks.run import bench_sizes, run_benchmark
    from torchship.exporters.inputs import parse_shape_list
    from torchship.exporters.spec import BATCH, SEQUENCE

    opts = _bench_options(**flags)
    artifact = Artifact.open(folder)
    spec = artifact.manifest.spec()
    resolved = _bench_shapes(artifact, shape_config)  # a config given here replaces the one kept at export
    batches = parse_shape_list(batch_sizes, what="--batch-sizes") if batch_sizes else None
    seqs = parse_shape_list(seq_lens, what="--seq-lens") if seq_lens else None
    device = resolved.device if resolved is not None else "cpu"
    sizes = bench_sizes(spec, artifact.load_config(), resolved, batch_sizes=batches, seq_lens=seqs)
    if spec.kind == "decoder":
        from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark

        prompt = prompt_length or sizes[0][SEQUENCE]
        report = run_decoder_benchmark(folder, DecoderBenchOptions(
            backends=opts.backends, batch_sizes=tuple(dict.fromkeys(sz[BATCH] for sz in sizes)), prompt=prompt,
            threads=opts.threads, spin=opts.spin, plan=opts.plan, reference_model=opts.reference_model),
            progress=_PROGRESS)
    else:
        report = run_benchmark(folder, replace(opts, sizes=sizes, device=device), progress=_PROGRESS)
    paths = write_report(report, report_dir or Path(folder) / "bench")
    click.echo(markdown_table(report))
    click.echo(f"\nreport: {paths['markdown']} (JSON {paths['json'].name}, chart {paths['png'].name})")


def _bench_shapes(artifact, shape_config):
    """The --config given to bench, checked against the folder's model; else the one kept at export."""
    from torchship.exporters.spec import EMPTY_OK_AXES
    from torchship.shapes import load_shape_config, resolve

    if shape_config:
        return resolve(load_shape_config(shape_config), artifact.manifest.io(), empty_ok_axes=EMPTY_OK_AXES)
    return artifact.manifest.resolved_shapes()


@main.command("predict")
@click.argument("folder", type=click.Path())
@click.argument("texts", nargs=-1, required=True)
@click.option("--backend", default="auto", show_default=True,
              help="auto (the most optimized validated ONNX variant), or any bench backend name.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: ONNX Runtime's CUDA provider when installed (torchship[gpu]) and a GPU is present.")
@click.option("--json", "as_json", is_flag=True, help="Print full results (embeddings, logits) as JSON.")
@friendly_errors
def predict_cmd(folder, texts, backend, device, as_json):
    """Run the model in FOLDER on TEXTS: sentence embeddings, or labels for classifiers."""
    from torchship.artifact import Artifact
    from torchship.runtimes import RuntimeOptions, create_predictor
    from torchship.runtimes.text import TextModel

    artifact = Artifact.open(folder).require_kind(
        "encoder", "predict runs text encoders; for a decoder use torchship generate, for a UNet torchship bench")
    backend = _resolve_backend(artifact, backend)
    predictor = create_predictor(artifact, backend, RuntimeOptions(device=device))
    with predictor:
        result = TextModel.from_artifact(artifact, predictor).predict(list(texts))
    if as_json:
        click.echo(json.dumps({"backend": backend, "results": result.to_json()}))
        return
    for row in result.to_json():
        if "embedding" in row:
            vec = row["embedding"]
            head = ", ".join(f"{v:+.4f}" for v in vec[:4])
            norm = sum(v * v for v in vec) ** 0.5
            click.echo(f"{row['text']!r}: embedding[{len(vec)}] norm {norm:.3f} [{head}, ...]")
        else:
            click.echo(f"{row['text']!r}: {row['label']} ({row['score']:.3f})")
    click.echo(f"(backend {backend}; --json for full vectors)", err=True)


@main.command("generate")
@click.argument("folder", type=click.Path())
@click.argument("prompts", nargs=-1, required=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--backend", default="auto", show_default=True,
              help="auto (the most optimized validated ONNX variant), torch, or any ort backend name.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print token ids and texts as JSON.")
@friendly_errors
def generate_cmd(folder, prompts, max_new_tokens, backend, device, as_json):
    """Greedy generation from PROMPTS with the decoder in FOLDER, using its KV cache."""
    from torchship.artifact import Artifact
    from torchship.runtimes import RuntimeOptions, create_predictor
    from torchship.runtimes.generate import Generator, encode_prompts
    from torchship.runtimes.text import load_tokenizer

    artifact = Artifact.open(folder).require_kind("decoder", "generate needs a decoder (export-gpt2)")
    backend = _resolve_backend(artifact, backend)
    tokenizer = load_tokenizer(artifact)
    ids, mask = encode_prompts(tokenizer, list(prompts))
    with create_predictor(artifact, backend, RuntimeOptions(device=device)) as predictor:
        result = Generator.from_artifact(artifact, predictor).generate(ids, mask, max_new_tokens=max_new_tokens)
    texts = tokenizer.batch_decode(result.tokens, skip_special_tokens=True)
    if as_json:
        click.echo(json.dumps({"backend": backend, "results": [
            {"prompt": p, "tokens": t.tolist(), "text": x} for p, t, x in zip(prompts, result.tokens, texts)]}))
        return
    for prompt, text in zip(prompts, texts):
        click.echo(f"{prompt}{text if text.startswith(' ') else ' ' + text}")
    per_token = (sum(result.step_s) / len(result.step_s) * 1000) if result.step_s else float("nan")
    click.echo(f"(backend {backend}; prompt {result.prefill_s * 1000:.1f} ms, {per_token:.2f} ms per new token)",
               err=True)


def _resolve_backend(artifact, backend: str) -> str:
    from torchship.runtimes import ORT_BACKENDS

    if backend != "auto":
        return backend
    variant = artifact.best_variant()
    return next(b for b, v in ORT_BACKENDS.items() if v == variant)


@main.command("auto")
@click.option("--model", "-m", "model", required=True, metavar="ID_OR_DIR_OR_ONNX",
              help="Hugging Face hub id, a local model folder, or an .onnx file.")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="YAML: device (cpu, cuda, cuda:N); inputs with min/use/max shapes; budget (cosine floor, "
                   "default 0.99); precisions (fp32, fp16, int8); threads; min_seconds.")
@o.output
@friendly_errors
def auto_cmd(model, config_path, output):
    """Build every variant that fits the device, validate and benchmark each, and name the fastest within budget.

    Writes OUTPUT/model/ (the torchship folder with every variant) and OUTPUT/summary.{md,csv,json,xlsx}
    plus latency_vs_error.png. Serve the chosen variant with: torchship triton OUTPUT --output REPO."""
    from torchship.auto import load_auto_config, markdown, run_auto

    config = load_auto_config(config_path)  # every contradiction fails here, before anything is built
    report = run_auto(model, config, output, progress=_PROGRESS)
    click.echo(markdown(report))
    click.echo(f"summary: {Path(output) / 'summary.md'} (CSV, JSON, XLSX, latency_vs_error.png beside it)")


@main.command("triton")
@click.argument("folder", type=click.Path())
@click.option("--output", "-o", "repo", required=True, type=click.Path(file_okay=False),
              help="The model repository folder (created if missing); the model goes to REPO/NAME/.")
@click.option("--variant", default=None,
              help="Variant or backend name (model, optimized, int8, openvino, tensorrt-fp16, ...); default: the "
                   "one torchship auto chose, else the most optimized validated variant.")
@click.option("--name", default=None, help="Model name in the repository; default: FOLDER's name.")
@click.option("--max-batch-size", type=int, default=None,
              help="Default: the shape config's max batch, else 8 (0 turns Triton's batching off).")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True)
@click.option("--preferred-batch-sizes", default=None, help="Comma-separated, e.g. 4,8.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances in the instance group.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@friendly_errors
def triton_cmd(folder, repo, variant, name, max_batch_size, dynamic_batching, preferred_batch_sizes,
               max_queue_delay_us, instances, kind):
    """Write a Triton Inference Server model repository entry for a variant of FOLDER (a torchship folder or a
    torchship auto output), its config.pbtxt checked against Triton's schema."""
    from torchship.exporters.inputs import parse_shape_list
    from torchship.triton import TritonOptions, write_triton_repo

    preferred = tuple(parse_shape_list(preferred_batch_sizes, what="--preferred-batch-sizes")) \
        if preferred_batch_sizes else ()
    path = write_triton_repo(folder, repo, TritonOptions(
        variant=variant, name=name, max_batch_size=max_batch_size, dynamic_batching=dynamic_batching,
        preferred_batch_sizes=preferred, max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind))
    click.echo((path / "config.pbtxt").read_text())
    click.echo(f"wrote {path}: " + ", ".join(sorted(p.name for p in (path / "1").iterdir())))


@main.command("demo")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="torchship-demo", show_default=True)
@o.threads
@click.option("--min-seconds", type=click.FloatRange(min=0.0), default=3.0, show_default=True,
              help="Minimum measured time per backend and shape.")
@friendly_errors
def demo_cmd(output, threads, min_seconds):
    """Export, validate, optimize and benchmark the packaged all-MiniLM-L6-v2, offline."""
    from torchship.demo import run_demo

    summary = run_demo(Path(output), threads=threads, min_seconds=min_seconds, progress=_PROGRESS)
    click.echo(summary)


def _print_artifact(artifact) -> None:
    m = artifact.manifest
    click.echo(f"{artifact.folder}: {m.family} ({m.model_type}) {m.task}, exporter {m.export['exporter']} "
               f"opset {m.export['opset']}")
    for name, v in m.variants.items():
        val = v.validation or {}
        line = f"  {name:13s} {v.file:22s} {v.size_bytes / 1e6:8.1f} MB  max abs {val.get('max_abs', float('nan')):.2e}"
        if v.fusion and "attention" in v.fusion:
            c = v.fusion["counts"]
            line += (f"  fused: Attention {v.fusion['attention']}/{v.fusion['expected_attention']}, "
                     f"EmbedLayerNorm {c['EmbedLayerNormalization']}, SkipLayerNorm {c['SkipLayerNormalization']}, "
                     f"Gelu {c['Gelu'] + c['FastGelu'] + c['BiasGelu'] + c['BiasFastGelu']}")
        click.echo(line)
        if v.fusion and v.fusion.get("warning"):
            click.echo(f"  {v.fusion['warning']}", err=True)
    for name, reason in m.skipped.items():
        click.echo(f"  {name:13s} skipped: {reason}", err=True)


if __name__ == "__main__":
    main()
