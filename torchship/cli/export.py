"""Export commands: ``torchship export``, the family commands (export-bert, export-gpt2, export-unet)
and ``torchship optimize``."""

from __future__ import annotations

import functools

import click

from torchship.cli import options as o
from torchship.cli._app import (CONTEXT, PROGRESS, examples, friendly_errors, main, print_artifact,
                                print_dispatch, quiet_libraries, split)
from torchship.exporters.spec import DENOISING, TEXT_GENERATION


def _export_options(task, exporter, opset, attn_implementation, atol, allow_pickle, trust_remote_code, revision,
                    shape_config, external_data, no_cache=False, tokenizer=None, kind=None):
    from torchship.exporters.export import ExportOptions
    from torchship.shapes import load_shape_config

    return ExportOptions(task=task, exporter=exporter, opset=opset, attn_implementation=attn_implementation,
                         atol=atol, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                         revision=revision, kind=kind, external_data=external_data, tokenizer=tokenizer,
                         no_cache=no_cache,
                         shapes=load_shape_config(shape_config) if shape_config else None)


def _export_params(fn, group=None):
    """The export flags; for a family command, its group's example model, tasks and export path, in its words."""
    from torchship.exporters.spec import default_exporter_of, tasks_of

    model, task, exporter, tokenizer, no_cache = o.model, o.task, o.exporter, (o.tokenizer,), (o.no_cache,)
    if group is not None:
        tasks = tasks_of(group.name)
        model = o.model_option(group.example)
        task = o.task_option(tasks, o.ENCODER_TASK_DEFAULT if group.name == "encoder" and len(tasks) > 1 else None)
        exporter = o.exporter_option(f"{default_exporter_of(group.name)}, measured best for {group.words}")
        tokenizer = () if DENOISING in tasks else (o.tokenizer,)  # a UNet takes no text
        no_cache = (o.no_cache,) if TEXT_GENERATION in tasks else ()
    for deco in reversed((model, o.output, task, exporter, o.opset, o.attn, o.atol, o.shape_config,
                          o.external_data, *no_cache, *tokenizer, o.allow_pickle, o.trust_remote_code, o.revision,
                          optimize)):
        fn = deco(fn)
    return fn


# One default for torchship export and every export-* command: a folder ready to serve, as the family
# commands always gave; --no-optimize stops after the validated export.
optimize = click.option("--optimize/--no-optimize", "optimize_after", default=True, show_default=True,
                        help="Also run torchship optimize on the folder: ORT graph levels, the transformer-fused "
                             "model, and the measured choice of variant per shape.")


def _do_export(model, output, optimize_after, **flags):
    from torchship.exporters.export import export

    options = _export_options(**flags)  # a bad shape config fails here, before any loading
    artifact = export(model, output, options, progress=PROGRESS)
    if optimize_after:
        from torchship.optimizers import optimize

        artifact = optimize(output, progress=PROGRESS)
    print_artifact(artifact)
    print_dispatch(artifact)


@main.command("export", epilog=examples(
    'torchship export --model bert-base-cased --output onnx/bert',
    'torchship export --model ./my-finetuned-roberta -o onnx/roberta --task text-classification',
    'torchship export --model ./my-bert-squad -o onnx/bert-qa'))
@_export_params
@friendly_errors
def export_cmd(model, output, optimize_after, **flags):
    """Export a checkpoint to ONNX, validated against eager PyTorch, then optimize it (--no-optimize: export
    only). export-bert, export-decoder (alias export-gpt2) and export-unet do the same for one family each."""
    _do_export(model, output, optimize_after, **flags)


def _family_export_command(name: str, group):
    """A console script that exports one family group (export-bert, export-gpt2) and optimizes."""

    example = f"{name} --model {group.example} --output onnx/{name.split('-')[-1]}"

    @click.command(name, help=group.help, context_settings=CONTEXT, epilog=examples(example))
    @functools.partial(_export_params, group=group)
    @friendly_errors
    def command(model, output, optimize_after, **flags):
        quiet_libraries()
        _do_export(model, output, optimize_after, kind=group.name, **flags)

    return command


def family_command(command: str):
    """The console script of a family group (export-bert, ...): its kind and help come from the group."""
    from torchship.exporters.spec import group_for_command

    return _family_export_command(command, group_for_command(command))


@main.command("optimize", epilog=examples(
    'torchship optimize onnx/bert',
    'torchship optimize onnx/bert --fp16 --openvino',
    'torchship optimize onnx/bert --candidates preset'))
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
@click.option("--candidates", default="measured", show_default=True, metavar="measured|preset",
              help="measured: time the validated fp32 variants at each shape of the shape config (else batch 1,8 x "
                   "sequence 16,128,384) on this machine and record which runs which shape range (predict and the "
                   "ort-measured backend use it); preset: no timing, the fixed preference order.")
@o.exact
@friendly_errors
def optimize_cmd(folder, levels, no_fusion, atol, fp16, fp16_block, fp16_budget, openvino, candidates, exact):
    """Add ORT graph-level and transformer-fused variants to an exported FOLDER, each validated, and measure
    which of them is fastest for each shape range."""
    from torchship.optimizers import OptimizeOptions, optimize

    names = tuple(lv.strip() for lv in levels.split(",") if lv.strip())
    options = OptimizeOptions(levels=names, transformer_fusion=not no_fusion, atol=atol, fp16=fp16,
                              fp16_block=split(fp16_block) or (), fp16_budget=fp16_budget, openvino=openvino,
                              candidates=candidates, approximate=not exact).resolved()  # bad flags fail first
    if openvino:
        from torchship.runtimes.openvino import require_openvino

        require_openvino()  # before any variant is made
    artifact = optimize(folder, options, progress=PROGRESS)
    print_artifact(artifact)
    print_dispatch(artifact)
