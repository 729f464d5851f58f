"""Running commands: ``torchship bench``, ``predict`` and ``generate``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from torchship.cli import options as o
from torchship.cli._app import PROGRESS, examples, friendly_errors, main
from torchship.errors import InputError


def _bench_options(backends, threads, min_seconds, warmup, min_iterations, ort_spin, reference_model):
    from dataclasses import replace

    from torchship._ort import usable_cpus
    from torchship.benchmarks.run import BenchOptions
    from torchship.benchmarks.timing import TimingPlan
    from torchship.runtimes import parse_backends

    plan = replace(TimingPlan(), min_seconds=min_seconds, warmup=warmup, min_iterations=min_iterations,
                   block=min(TimingPlan().block, min_iterations))
    return BenchOptions(backends=parse_backends(backends) if backends else None,  # None: every variant
                        threads=usable_cpus() if threads is None else threads,
                        spin=ort_spin, plan=plan, reference_model=reference_model)


@main.command("bench", epilog=examples(
    'torchship bench onnx/bert --batch-sizes 1,8 --seq-lens 16,128',
    'torchship bench onnx/bert --backends torch,ort-optimized,ort-int8,openvino --batch-sizes 1 --seq-lens 128',
    'torchship bench onnx/gpt2 --prompt-length 32',
    'torchship bench onnx/gpt2 --prompt-length 16,64 --past-length 16,64 --no-peak-memory'))
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
@o.past_length
@o.genai
@o.peak_memory
@friendly_errors
def bench_cmd(folder, report_dir, prompt_length, past_length, genai, peak_memory, batch_sizes, seq_lens,
              shape_config, **flags):
    """Benchmark eager PyTorch against ONNX Runtime variants of FOLDER; writes JSON, Markdown and PNG.

    Encoders: latency per batch size and sequence length. UNets: one denoising step at the shape
    config's use shape (or the model's native latent size, 77 tokens). Decoders: prefill latency at each
    --prompt-length and one decode step after each --past-length, per batch size, with tokens/s, file
    size and peak memory per row; by default eager PyTorch with its cache, the fp32 exports, every
    weight-only variant, and onnxruntime-genai's build of the checkpoint at the same precisions.
    """
    from dataclasses import replace

    from torchship.artifact import Artifact
    from torchship.benchmarks.report import budget_lines, markdown_table, write_report
    from torchship.benchmarks.run import bench_sizes, run_benchmark
    from torchship.exporters.inputs import parse_shape_list
    from torchship.exporters.spec import BATCH, DECODE, PAST_SEQUENCE, SEQUENCE, family_of, saved_config

    from torchship._fs import check_output_dir
    from torchship.benchmarks.report import RESULTS_NAME

    opts = _bench_options(**flags)
    batches = parse_shape_list(batch_sizes, what="--batch-sizes") if batch_sizes else None
    seqs = parse_shape_list(seq_lens, what="--seq-lens") if seq_lens else None
    artifact = Artifact.open(folder)
    spec = family_of(artifact.manifest)
    report_dir = Path(report_dir) if report_dir else Path(folder) / "bench"
    check_output_dir(report_dir, marker=RESULTS_NAME)  # before minutes of measuring, not after
    for flag, given in (("--prompt-length", prompt_length), ("--past-length", past_length)):
        if given is not None and DECODE not in spec.phases:
            raise InputError(f"{flag} is for decoders; {artifact.folder} holds {spec.group.one}: use --seq-lens")
    resolved = _bench_shapes(artifact, shape_config)  # a config given here replaces the one kept at export
    device = resolved.device if resolved is not None else "cpu"
    sizes = bench_sizes(spec, saved_config(artifact), resolved, batch_sizes=batches, seq_lens=seqs)
    if DECODE in spec.phases:
        from torchship.benchmarks.decoder import DecoderBenchOptions, run_decoder_benchmark
        from torchship.benchmarks.report import decoder_notes, judged_lines

        prompts = parse_shape_list(prompt_length, what="--prompt-length") if prompt_length else None
        pasts = parse_shape_list(past_length, what="--past-length") if past_length else None
        if resolved is not None and prompts is None:  # the shape config's use shape, as before
            use = resolved.sizes("use")
            prompts = (use[SEQUENCE],)
            pasts = pasts or ((use[PAST_SEQUENCE],) if use.get(PAST_SEQUENCE) else prompts)
        report = run_decoder_benchmark(folder, DecoderBenchOptions(
            backends=opts.backends if flags["backends"] else None,
            batch_sizes=tuple(dict.fromkeys(sz[BATCH] for sz in sizes)), prompt_lengths=prompts,
            past_lengths=pasts or prompts, threads=opts.threads, spin=opts.spin, plan=opts.plan,
            reference_model=opts.reference_model, genai=genai, peak_memory=peak_memory), progress=PROGRESS)
        extra = judged_lines(report) + decoder_notes(report)
    else:
        report = run_benchmark(folder, replace(opts, sizes=sizes, device=device), progress=PROGRESS)
        extra = []
    click.echo(markdown_table(report))  # first: a report that cannot be written does not lose the numbers
    for line in [*extra, *budget_lines(report)]:
        click.echo(line)
    paths = write_report(report, report_dir)
    click.echo(f"\nreport: {paths['markdown']} (JSON {paths['json'].name}, chart {paths['png'].name})")


def _bench_shapes(artifact, shape_config):
    """The --config given to bench, checked against the folder's model; else the one kept at export."""
    from torchship.exporters.spec import EMPTY_OK_AXES
    from torchship.shapes import load_shape_config, resolve

    if shape_config:
        return resolve(load_shape_config(shape_config), artifact.manifest.io(), empty_ok_axes=EMPTY_OK_AXES)
    return artifact.manifest.resolved_shapes()


@main.command("predict", epilog=examples(
    'torchship predict onnx/bert "some text" "more text"',
    'torchship predict onnx/bert-qa --question "who was eating?" "the dog was eating food at the cafe"'))
@click.argument("folder", type=click.Path())
@click.argument("inputs", nargs=-1, metavar="INPUTS...")
@click.option("--backend", default="auto", show_default=True,
              help="auto: the fastest variant judged within its budget, as optimize and quantize timed them on "
                   "this machine (a line says which and why), or any bench backend name.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: ONNX Runtime's CUDA provider when installed (torchship[gpu]) and a GPU is present.")
@click.option("--json", "as_json", is_flag=True, help="Print full results (embeddings, logits) as JSON.")
@o.aggregation
@click.option("--question", default=None, help="Question-answering models: the question; TEXTS are the contexts "
                                               "(any length: a long one is read in overlapping windows).")
@click.option("--labels", default=None, metavar="A,B,...",
              help="Image-text models (CLIP, SigLIP): score the images against these labels (zero-shot).")
@click.option("--label", "label_list", multiple=True, metavar="LABEL", help="One zero-shot label (repeatable).")
@click.option("--template", default=None, metavar="TEXT",
              help="Zero-shot: the prompt each label is put into, with {} for the label (default: the checkpoint's, "
                   "else \"a photo of a {}.\").")
@click.option("--text", "text_list", multiple=True, metavar="TEXT",
              help="Image-text models: embed this text with the text tower (repeatable).")
@friendly_errors
def predict_cmd(folder, inputs, backend, device, as_json, aggregation, question, labels, label_list, template,
                text_list):
    """Run the model in FOLDER on INPUTS: for text models texts (sentence embeddings, labels for classifiers, the
    likeliest tokens at each mask for fill-mask models); for image models image files (labels with scores, or
    embeddings; image-text models score them against --labels, and embed --text)."""
    from torchship.artifact import Artifact
    from torchship.exporters.spec import require_family
    from torchship.runtimes import RuntimeOptions, create_predictor
    from torchship.runtimes.images import takes_images
    from torchship.runtimes.text import TextModel

    artifact = Artifact.open(folder)
    zero_shot = [t.strip() for t in (labels or "").split(",") if t.strip()] + [t for t in label_list if t.strip()]
    if takes_images(artifact):
        _refuse_unused_flags(artifact, question=question)
        return _predict_images(artifact, inputs, backend, device, as_json, zero_shot, template, list(text_list))
    for flag, given in (("--labels", labels or label_list), ("--template", template), ("--text", text_list)):
        if given:
            raise InputError(f"{flag} is for image-text models; {artifact.folder} does {artifact.manifest.task}: "
                             f"drop {flag}")
    if not inputs:
        raise click.UsageError("Missing argument 'INPUTS...'.")
    texts = inputs
    require_family(artifact, "predict runs text encoders; for a decoder use torchship generate, for a UNet "
                             "torchship bench", text_api="predict")
    _refuse_unused_flags(artifact, question=question)
    backend = _resolve_backend(artifact, backend)
    _warn_batch_dependent(artifact, backend)
    predictor = create_predictor(artifact, backend, RuntimeOptions(device=device))
    with predictor:
        result = TextModel.from_artifact(artifact, predictor).predict(list(texts), aggregation=aggregation,
                                                                           question=question)
    if as_json:
        click.echo(json.dumps({"backend": backend, "results": result.to_json()}))
        return
    for row in result.to_json():
        if "answer" in row:
            click.echo(f"{row['text']!r}: {row['answer']!r} [{row['start']}:{row['end']}] {row['score']:.3f}")
        elif "entities" in row:
            found = "; ".join(f"{e.get('entity_group', e.get('entity'))} {e['word']!r} [{e['start']}:{e['end']}] "
                              f"{e['score']:.3f}" for e in row["entities"]) or "no entities"
            click.echo(f"{row['text']!r}: {found}")
        elif "masks" in row:
            for i, candidates in enumerate(row["masks"], 1):
                best = ", ".join(f"{c['token_str']!r} {c['score']:.3f}" for c in candidates)
                click.echo(f"{row['text']!r}: mask {i}: {best}")
        elif "embedding" in row:
            vec = row["embedding"]
            head = ", ".join(f"{v:+.4f}" for v in vec[:4])
            norm = sum(v * v for v in vec) ** 0.5
            click.echo(f"{row['text']!r}: embedding[{len(vec)}] norm {norm:.3f} [{head}, ...]")
        else:
            click.echo(f"{row['text']!r}: {row['label']} ({row['score']:.3f})")
    for i, dropped in result.truncated():
        click.echo(f"torchship: note: text {i + 1} has {result.tokens[i]} tokens and the model reads "
                   f"{result.max_length}: the last {dropped} were cut", err=True)
    ran = f" ran {', '.join(predictor.ran)}" if getattr(predictor, "ran", None) else ""
    click.echo(f"(backend {backend}{ran}; --json for full vectors)", err=True)


def _predict_images(artifact, inputs, backend, device, as_json, labels, template, texts) -> None:
    """predict on an image folder: labels with scores (classifiers, zero-shot with --labels) or embeddings, and
    text embeddings of an image-text model's text tower (--text)."""
    from torchship.runtimes import RuntimeOptions, graph_names
    from torchship.runtimes.images import ImageModel

    if not inputs and not texts:
        raise InputError(f"give image files to predict on (torchship predict {artifact.folder} cat.jpg)"
                         f"{' or --text' if len(graph_names(artifact)) > 1 else ''}")
    if template is not None and not labels:
        raise InputError("--template is for zero-shot labels: give --labels too")
    missing = next((p for p in inputs if not Path(p).is_file()), None)
    if missing is not None:  # before a model loads
        raise InputError(f"{missing}: no such file")
    backend = _resolve_backend(artifact, backend)
    results = []  # (result, whether its rows are texts)
    with ImageModel.from_artifact(artifact, backend, RuntimeOptions(device=device)) as model:
        if texts:
            results.append((model.embed_texts(texts), True))
        if inputs:
            results.append((model.predict(list(inputs), labels=labels or None, template=template), False))
    notes = [note for r, _ in results for note in r.notes]
    if as_json:
        click.echo(json.dumps({"backend": backend, "results": [row for r, _ in results for row in r.to_json()],
                               **({"notes": notes} if notes else {})}))
        return
    for result, are_texts in results:
        for i, name in enumerate(result.names):
            shown = repr(name) if are_texts else name
            if result.scores is not None:
                click.echo(f"{shown}: " + ", ".join(f"{label} {score:.3f}" for label, score in result.top(i)))
            else:
                vec = result.embeddings[i]
                norm = sum(float(v) * float(v) for v in vec) ** 0.5
                click.echo(f"{shown}: embedding[{len(vec)}] norm {norm:.3f} [{', '.join(f'{v:+.4f}' for v in vec[:4])}, ...]")
    for note in notes:
        click.echo(f"torchship: note: {note}", err=True)
    click.echo(f"(backend {backend}; --json for full vectors)", err=True)


def _refuse_unused_flags(artifact, *, question) -> None:
    """A flag for another task is refused, one line, before anything loads: --aggregation groups a token
    classifier's tokens, --question is for question answering."""
    from click.core import ParameterSource

    task = artifact.manifest.task
    given = click.get_current_context().get_parameter_source("aggregation") != ParameterSource.DEFAULT
    for flag, used, wanted in (("--aggregation", given, "token-classification"),
                               ("--question", question is not None, "question-answering")):
        if used and task != wanted:
            raise InputError(f"{flag} is for {wanted} models; {artifact.folder} does {task}: drop {flag}")


def _warn_batch_dependent(artifact, backend: str) -> None:
    """An int8 file made before per-row activations still runs when named, with a line that says what it does."""
    from torchship.optimizers.int8_rows import per_tensor_file

    variant = artifact.variant_for(backend) if backend == "ort-int8" else None
    file = per_tensor_file(artifact, variant.name) if variant is not None else None
    if file:
        PROGRESS.step(f"WARNING: {file} scales activations per tensor, so a text's answer depends on the "
                      f"rest of its batch; make it again with: torchship quantize {artifact.folder} --int8")


def _resolve_backend(artifact, backend: str) -> str:
    """``auto``: the fastest variant judged within its budget as optimize and quantize timed them on this machine
    (runtimes/auto_backend.py), said in one line on stderr; any other name as given."""
    from torchship.runtimes.auto_backend import choose

    if backend != "auto":
        return backend
    choice = choose(artifact)
    click.echo(f"torchship: {choice.line()}", err=True)
    return choice.backend
