"""Precision commands: ``torchship quantize`` (int8 chosen by measurement) and ``torchship tensorrt``."""

from __future__ import annotations

import click

from torchship.cli import options as o
from torchship.cli._app import PROGRESS, examples, friendly_errors, main, split
from torchship.errors import InputError, TorchshipError
from torchship.backends import records

# --precision of torchship tensorrt: the table's TensorRT backends, by their precision.
ENGINE_FLAGS = {b.precision: b.engine_flags for b in records() if b.runtime == "tensorrt"}


@main.command("tensorrt", epilog=examples(
    'torchship tensorrt onnx/bert --precision fp16 --opt-shapes input_ids:1x128,attention_mask:1x128,token_type_ids:1x128'))
@click.argument("folder", type=click.Path())
@click.option("--precision", type=click.Choice(list(ENGINE_FLAGS)), default="fp16", show_default=True,
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
    from torchship.optimizers.tensorrt_build import engine_for_artifact, engine_source
    from torchship.optimizers.tensorrt_profiles import (artifact_profiles, profiles_from_shapes,
                                                        shape_config_from_flags)
    from torchship.runtimes.tensorrt import require_tensorrt
    from torchship.shapes import load_shape_config, resolve
    from torchship.tensors import EMPTY_OK_AXES

    artifact = Artifact.open(folder)
    flags = ENGINE_FLAGS[precision]
    engine_source(artifact, flags)  # int8 needs a static (QDQ) variant, as the tensorrt-int8 backend does
    io = artifact.manifest.io()
    if shape_config:
        profiles = profiles_from_shapes(resolve(load_shape_config(shape_config), io, empty_ok_axes=EMPTY_OK_AXES), io)
    elif min_shapes or opt_shapes or max_shapes:
        config = shape_config_from_flags(min_shapes, opt_shapes, max_shapes)
        profiles = profiles_from_shapes(resolve(config, io, empty_ok_axes=EMPTY_OK_AXES), io)
    else:
        profiles = artifact_profiles(artifact)
    require_tensorrt()
    built = engine_for_artifact(artifact, flags, profiles, progress=PROGRESS)
    click.echo(f"{built.path} ({'from cache' if built.from_cache else f'built in {built.seconds:.0f} s'}; "
               + ", ".join(f"{p.name} {list(p.min)}..{list(p.max)} opt {list(p.opt)}" for p in profiles) + ")")


def _choices(value: str) -> tuple[bool, ...]:
    return {"yes": (True,), "no": (False,), "both": (True, False)}[value]


@main.command("quantize", epilog=examples(
    'torchship quantize onnx/bert --int8',
    'torchship quantize onnx/bert --method both --calibration texts.txt',
    'torchship quantize onnx/gpt2 --method weight-only --bits 4 --block-size 128'))
@click.argument("folder", type=click.Path())
@click.option("--int8", "int8", is_flag=True, default=False,
              help="The int8 method: weights and activations in int8, the fastest candidate within the budget "
                   "(what quantize makes unless --method weight-only asks for int4 or int8 weights only).")
@click.option("--method", type=click.Choice(["auto", "dynamic", "static", "both", "weight-only"]), default="auto",
              show_default=True,
              help="auto: dynamic, plus static when --calibration is given or the model takes images (calibrated "
                   "on generated images). weight-only (decoders): MatMulNBits "
                   "weights of --bits, activations fp32, judged on a 64-token decode against the fp32 export.")
@click.option("--bits", type=click.Choice(["4", "8"]), default=None,
              help="Weight-only: bits per weight (default 4).")
@click.option("--block-size", type=click.Choice(["16", "32", "64", "128", "256"]), default=None,
              help="Weight-only: weights per scale along K (default 128).")
@click.option("--symmetric/--asymmetric", "symmetric", default=None,
              help="Weight-only: scales only (default), or scales and zero points (a little more accurate, "
                   "a little slower).")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
              help="Weight-only: MatMulNBits compute type, 1 fp32 ... 4 int8 (default 4, the fast CPU path).")
@click.option("--quantize-embedding", is_flag=True, default=False,
              help="Weight-only: also the token embedding (4 bits only).")
@click.option("--head/--no-head", "head", default=None,
              help="Weight-only: quantize the MatMul that makes the logits too (default: yes).")
@click.option("--max-weight-error", type=click.FloatRange(0.0, min_open=True), default=None,
              help="Weight-only: ceiling on any MatMul's relative weight error (default 0.15 at 4 bits, 0.01 at 8). "
                   "--budget is then the floor on the mean next-token logit cosine (default: 0.99 at 8 bits, none "
                   "at 4, where it is reported only).")
@click.option("--calibration", type=click.Path(), default=None,
              help="Calibration data for static int8: a text file (one text per line) or an .npz with one array "
                   "per model input (samples on the first axis); for an image model, a folder of images (added to "
                   "the generated images it calibrates on by itself).")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--per-channel", type=click.Choice(["both", "yes", "no"]), default="both", show_default=True,
              help="Per-channel weight scales; 'both' tries each and keeps the better by measurement.")
@click.option("--reduce-range", type=click.Choice(["no", "yes", "both"]), default="no", show_default=True,
              help="7-bit weights (avoids saturation in the int8 kernels of CPUs without VNNI).")
@click.option("--from", "sources", default=None,
              help="Variants to quantize, comma-separated: model (the export), optimized (transformer-fused), "
                   "optimized-unfused-ln (fused, but residual Add + LayerNorm unfused; optimized-ln before), "
                   "optimized-unfused-ln-approx (that, with GELU as FastGelu). Default: all that apply but the "
                   "last.")
@click.option("--approximate-gelu", is_flag=True,
              help="Also quantize the fused graph with GELU as its tanh approximation (FastGelu, as Optimum's O3; "
                   "optimized-unfused-ln-approx); judged by the same accuracy probe, kept only if fastest within budget.")
@click.option("--op-types", default=None, help="Op types to quantize, comma-separated (e.g. MatMul,Attention); "
                                               "default: ONNX Runtime's for the method.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave nodes whose names match PATTERN (fnmatch, e.g. '*layer.5*') in fp32; repeatable.")
@click.option("--activation-type", type=click.Choice(["both", "uint8", "int8"]), default="both", show_default=True,
              help="Static int8: unsigned (QUInt8) or signed (QInt8) activations; 'both' tries each.")
@click.option("--quant-format", type=click.Choice(["both", "qdq", "qoperator"]), default="both", show_default=True,
              help="Static int8: QuantizeLinear/DequantizeLinear pairs (what TensorRT reads) or QLinear* operators; "
                   "'both' tries each.")
@click.option("--fallback", type=click.Choice(["auto", "always", "off"]), default="auto", show_default=True,
              help="Leave the MatMuls int8 hurts most in fp32 (ranked by a one-pass sensitivity estimate, each try "
                   "judged by the accuracy probe): auto when no candidate meets the budget; always also for "
                   "candidates below budget that time faster than the fastest within it.")
@click.option("--max-fp32", type=click.IntRange(0), default=8, show_default=True,
              help="The most MatMuls the fallback leaves in fp32 (it tries 1, 2, 4, ... up to this).")
@o.budget
@o.eval_texts
@o.threads
@friendly_errors
def quantize_cmd(folder, int8, method, bits, block_size, symmetric, accuracy_level, quantize_embedding, head,
                 max_weight_error, calibration, calibration_method, per_channel, reduce_range, sources, op_types,
                 exclude, approximate_gelu, activation_type, quant_format, fallback, max_fp32, budget, eval_texts, threads):
    """Make an int8 variant of FOLDER: try several quantizations, keep the fastest within the accuracy budget.
    With --method weight-only (decoders), an int4 or int8 weight-only variant instead."""
    symmetric_flag = "--asymmetric" if symmetric is False else "--symmetric"  # the one given
    weight_flags = {"--bits": bits, "--block-size": block_size, symmetric_flag: symmetric,
                    "--accuracy-level": accuracy_level,
                    "--quantize-embedding": quantize_embedding or None, "--head/--no-head": head,
                    "--max-weight-error": max_weight_error}
    if int8 and method == "weight-only":
        raise InputError("--int8 (weights and activations in int8) and --method weight-only (weights only) ask for "
                         "different variants; drop one")
    if method == "weight-only":
        from click.core import ParameterSource

        ctx = click.get_current_context()
        int8_only = ("calibration", "calibration_method", "per_channel", "reduce_range", "sources", "op_types",
                     "exclude", "approximate_gelu", "activation_type", "quant_format", "fallback", "max_fp32",
                     "eval_texts")
        given = [n for n in int8_only if ctx.get_parameter_source(n) != ParameterSource.DEFAULT]
        if given:
            flag = next(o for o in ctx.command.params if o.name == given[0]).opts[0]
            raise InputError(f"{flag} is for int8 quantization, not --method weight-only; drop {flag}")
        user_budget = ctx.get_parameter_source("budget") != ParameterSource.DEFAULT
        _weight_only(folder, bits, block_size, symmetric, accuracy_level, quantize_embedding, head,
                     max_weight_error, budget if user_budget else None, threads)
        return
    given = [flag for flag, value in weight_flags.items() if value is not None]
    if given:
        raise InputError(f"{given[0]} is for --method weight-only; add it, or drop {given[0]}")
    from torchship.optimizers.int8_candidates import ACTIVATION_TYPES, DEFAULT_SOURCES, QUANT_FORMATS
    from torchship.optimizers.quantize import QuantizeOptions, quantize

    if calibration and method == "dynamic":
        raise InputError("--calibration is for static int8, and --method dynamic would ignore it; drop one, or use "
                         "--method both")
    both = ("dynamic", "static") if calibration or _takes_images(folder) else ("dynamic",)
    methods = {"auto": both, "dynamic": ("dynamic",),
               "static": ("static",), "both": ("dynamic", "static")}[method]
    if approximate_gelu:
        sources = ",".join(dict.fromkeys([*(split(sources) or DEFAULT_SOURCES), "optimized-unfused-ln-approx"]))
    static_only = [flag for flag, value in (("--activation-type", activation_type), ("--quant-format", quant_format))
                   if value != "both"]
    if static_only and "static" not in methods:
        raise InputError(f"{static_only[0]} is for static int8; add --calibration FILE, or drop {static_only[0]}")
    opts = QuantizeOptions(
        methods=methods, per_channel=_choices(per_channel),
        reduce_range=_choices(reduce_range),
        sources=split(sources), op_types=split(op_types), exclude=tuple(exclude), calibration=calibration,
        calibration_method=calibration_method, eval_texts=eval_texts, budget=budget, threads=threads,
        activation_types=ACTIVATION_TYPES if activation_type == "both" else (activation_type,),
        quant_formats=QUANT_FORMATS if quant_format == "both" else (quant_format,),
        fallback=fallback, max_fp32=max_fp32)
    try:
        artifact = quantize(folder, opts, progress=PROGRESS)
    finally:
        _print_candidates(folder)
    v = artifact.manifest.variants["int8"]
    click.echo(f"kept {v.options.name} as {artifact.folder / v.file} ({v.size_bytes / 1e6:.1f} MB, "
               f"{v.validation.accuracy.metric} {v.validation.accuracy.mean:.4f}, {v.options.speedup_vs_fp32:.2f}x "
               f"the fp32 export at {v.options.shape})")


def _takes_images(folder) -> bool:
    """Whether the folder holds an image model (static int8 calibrates on generated images without --calibration)."""
    from torchship.artifact import Artifact
    from torchship.exporters.spec import ENCODE_IMAGE, family_of

    return ENCODE_IMAGE in family_of(Artifact.open(folder).manifest).phases


def _weight_only(folder, bits, block_size, symmetric, accuracy_level, embedding, head, max_weight_error, budget,
                 threads):
    from torchship.optimizers.weight_only import WeightOnlyOptions, variant_name, weight_only

    defaults = WeightOnlyOptions()
    opts = WeightOnlyOptions(bits=int(bits or defaults.bits), block_size=int(block_size or defaults.block_size),
                             symmetric=defaults.symmetric if symmetric is None else symmetric,
                             accuracy_level=defaults.accuracy_level if accuracy_level is None else accuracy_level,
                             embedding=embedding, head=defaults.head if head is None else head, budget=budget,
                             max_weight_error=max_weight_error, threads=threads)
    artifact = weight_only(folder, opts, progress=PROGRESS)
    v = artifact.manifest.variants[variant_name(opts.bits)]
    click.echo(f"kept {artifact.folder / v.file} ({v.size_bytes / 1e6:.1f} MB, "
               f"{v.validation.decode.quantized_matmuls} MatMuls at {opts.bits} bits): {v.validation.summary}")


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
    for c in q.candidates:
        acc = c.accuracy
        mean = f"{acc.mean:.4f}" if acc else "-"
        low = f"{acc.min:.4f}" if acc else "-"
        p50 = f"{c.p50_ms:.2f}" if c.p50_ms else "-"
        ratio = f"{c.speedup_vs_fp32:.2f}x" if c.speedup_vs_fp32 else "-"
        kept = c.verdict or ("yes" if c.name == q.chosen else c.error if c.error
                             else "no: slower" if c.passed else "no: below budget")
        click.echo(f"| {c.name} | {mean} | {low} | {p50} | {ratio} | {kept} |")
    for t in q.targets:
        top = ", ".join(f"{r.node} ({r.error:.3f})" for r in t.ranking[:3])
        click.echo(f"fp32 fallback of {t.candidate}: most sensitive {top}; "
                   + (f"rescued by {t.rescued_by}" if t.rescued_by else f"not rescued ({len(t.tried)} tries)"))
