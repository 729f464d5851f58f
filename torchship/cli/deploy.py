"""Deployment commands: ``torchship auto``, ``triton`` and ``demo``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from torchship.cli import options as o
from torchship.cli._app import PROGRESS, examples, friendly_errors, main, no_file
from torchship.serving.repository import LAYOUTS, RUNTIMES, SERVE_TASKS, TEXT_QUEUE_DELAY_US


@main.command("auto", epilog=examples(
    'torchship auto --model bert-base-cased --config auto.yml --output auto/'))
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
    report = run_auto(model, config, output, progress=PROGRESS)
    click.echo(markdown(report))
    click.echo(f"summary: {Path(output) / 'summary.md'} (CSV, JSON, XLSX, latency_vs_error.png beside it)")


@main.command("triton", epilog=examples(
    'torchship triton auto/ --output model_repository',
    'torchship triton onnx/bert --output model_repository --name bert-int8 --variant ort-int8 --instances 2',
    'torchship triton onnx/bert --output native_repository --name bert-native --runtime onnxruntime'))
@click.argument("folder", type=click.Path())
@click.option("--output", "-o", "repo", required=True, type=click.Path(),
              help="The model repository folder (created if missing); the model goes to REPO/NAME/.")
@click.option("--task", default=None, type=click.Choice(SERVE_TASKS),
              help="What the served model returns for each text: embedding (pooled, normalised as the model "
                   "says), classification (label and scores), hidden-states, entities (token classifiers: JSON "
                   "with character spans), fill-mask (JSON: the top tokens per mask), question-answering (QUESTION "
                   "and TEXT in: the answer and its span); or tensors: token ids in, the model's outputs out (no "
                   "tokenizer in the server). Image folders take IMAGE (encoded files) and give classification or "
                   "embedding. Default: the folder's task (embedding for encoders; tensors for decoders and UNets).")
@click.option("--runtime", default="python", show_default=True, type=click.Choice(RUNTIMES),
              help="Where the model step runs: python (ONNX Runtime inside Triton's Python backend: serves on any "
                   "tritonserver, torchship serve's included) or Triton's native onnxruntime, tensorrt, openvino "
                   "backend (NVIDIA's container).")
@click.option("--layout", default=None, type=click.Choice(LAYOUTS),
              help="single: one Python model does tokenize, run, post-process; ensemble: three steps. Default: "
                   "single for --runtime python, ensemble otherwise.")
@click.option("--strict", is_flag=True, help="Answer an error for a text over the model's maximum length "
                                             "(default: truncate it and count the tokens dropped in TRUNCATED).")
@o.aggregation
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads per instance (Python runtime); default: the server's cores / instances.")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=None,
              help="Image models: refuse an image of more pixels (width x height) than this, as a decompression "
                   "bomb (default: Pillow's own limit).")
@click.option("--variant", default=None,
              help="Variant or backend name (model, optimized, int8, openvino, tensorrt-fp16, ...); default: the "
                   "one torchship auto chose, else the most optimized validated variant.")
@click.option("--name", default=None, help="Model name in the repository; default: FOLDER's name.")
@click.option("--max-batch-size", type=int, default=None,
              help="Default: the shape config's max batch, else 8 (0 turns Triton's batching off; tensors only).")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True)
@click.option("--preferred-batch-sizes", default=None, help="Comma-separated, e.g. 4,8.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=None,
              help=f"How long Triton holds a request to batch it with others. Default: {TEXT_QUEUE_DELAY_US} for "
                   f"text models (measured: docs/serving.md), 100 for tensors.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances in the instance group.")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@friendly_errors
def triton_cmd(folder, repo, task, runtime, layout, strict, aggregation, threads, max_image_pixels, variant, name,
               max_batch_size, dynamic_batching, preferred_batch_sizes, max_queue_delay_us, instances, kind):
    """Write a Triton Inference Server model repository entry for FOLDER (a torchship folder or a torchship auto
    output): by default a model that takes TEXT and returns finished results, every config checked against
    Triton's schema, and a README.md in the repository that says how to serve it (README.torchship.md when
    README.md is someone else's). Other model folders in the repository are left as they are."""
    from torchship.exporters.inputs import parse_shape_list

    no_file(repo, "--output")
    from torchship.serving.inventory import README, readme_path
    from torchship.serving.image_repo import write_repo
    from torchship.serving.repository import ServeOptions
    from torchship.serving.triton_repo import MARKER, TritonOptions, config_summary

    preferred = tuple(parse_shape_list(preferred_batch_sizes, what="--preferred-batch-sizes")) \
        if preferred_batch_sizes else ()
    sopts = ServeOptions(task=task, runtime=runtime, layout=layout, strict=strict, threads=threads,
                         aggregation=aggregation, max_image_pixels=max_image_pixels)
    topts = TritonOptions(variant=variant, name=name, max_batch_size=max_batch_size, dynamic_batching=dynamic_batching,
                          preferred_batch_sizes=preferred, instances=instances, kind=kind,
                          **({} if max_queue_delay_us is None else {"max_queue_delay_us": max_queue_delay_us}))
    paths = write_repo(folder, repo, topts, sopts, default_delay=max_queue_delay_us is None)
    for path in paths:
        click.echo(f"wrote {path}: " + ", ".join(sorted(p.name for p in (path / "1").iterdir())))
    entry = paths[0]
    packaged = json.loads((entry / MARKER).read_text())
    click.echo(config_summary((entry / "config.pbtxt").read_text()))
    click.echo(f"config: {entry / 'config.pbtxt'}")
    click.echo(f"packaged {packaged['variant']} from {packaged['source']}: {packaged['why']}")
    readme = readme_path(repo)
    beside = f" (beside {readme.with_name(README)}, which is not torchship's and stays as it was)" \
        if readme.name != README else ""
    click.echo(f"how to serve it: {readme}{beside}")


@main.command("demo", epilog=examples(
    'torchship demo --min-seconds 1'))
@click.option("--output", "-o", type=click.Path(), default="torchship-demo", show_default=True)
@o.threads
@click.option("--min-seconds", type=click.FloatRange(min=0.0), default=3.0, show_default=True,
              help="Minimum measured time per backend and shape.")
@friendly_errors
def demo_cmd(output, threads, min_seconds):
    """Export, validate, optimize and benchmark the packaged all-MiniLM-L6-v2, offline."""
    from torchship.demo import run_demo

    no_file(output, "--output")

    summary = run_demo(Path(output), threads=threads, min_seconds=min_seconds, progress=PROGRESS)
    click.echo(summary)
