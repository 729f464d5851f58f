"""Precision commands: ``torchship quantize`` (int8 chosen by measurement) and ``torchship tensorrt``."""

from __future__ import annotations

import click

from torchship import options as o
from torchship.cli._app import PROGRESS, examples, friendly_errors, main, split
from torchship.errors import InputError, TorchshipError
from torchship.variants import TABLE

# --precision of torchship tensorrt: the table's TensorRT backends, by their precision.
ENGINE_FLAGS = {b.precision: b.settings["flags"] for b in TABLE if b.runtime == "tensorrt"}


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
    'torchship quantize onnx/bert --method both --calibration texts.txt'))
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

    if calibration and method == "dynamic":
        raise InputError("--calibration is for static int8, and --method dynamic would ignore it; drop one, or use "
                         "--method both")
    methods = {"auto": ("dynamic", "static") if calibration else ("dynamic",), "dynamic": ("dynamic",),
               "static": ("static",), "both": ("dynamic", "static")}[method]
    opts = QuantizeOptions(
        methods=methods, per_channel=_choices(per_channel),
        reduce_range=_choices(reduce_range),
        sources=split(sources), op_types=split(op_types), exclude=tuple(exclude), calibration=calibration,
        calibration_method=calibration_method, eval_texts=eval_texts, budget=budget, threads=threads)
    try:
        artifact = quantize(folder, opts, progress=PROGRESS)
    finally:
        _print_candidates(folder)
    v = artifact.manifest.variants["int8"]
    click.echo(f"kept {v.options['name']} as {artifact.folder / v.file} ({v.size_bytes / 1e6:.1f} MB, "
               f"{v.validation['metric']} {v.validation['mean']:.4f}, {v.options['speedup_vs_fp32']:.2f}x the fp32 "
               f"export at {v.options['shape']})")


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
