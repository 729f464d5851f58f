"""Serving commands: ``torchship serve`` (a real tritonserver on loopback) and ``torchship loadtest``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import click

from torchship.cli._app import PROGRESS, examples, friendly_errors, main, no_file


@main.command("serve", epilog=examples(
    'torchship serve model_repository --check',
    'torchship serve model_repository --http-port 8000 --grpc-port 8001 --metrics-port 8002'))
@click.argument("repo", type=click.Path(), required=False)
@click.option("--setup", is_flag=True, help="Set up the server once: unpack nvidia-pytriton's tritonserver and "
                                            "build its Python-backend environment (needs PyPI).")
@click.option("--if-missing", is_flag=True, help="With --setup: do nothing when the server is already set up "
                                                 "with the packages this torchship serves with.")
@click.option("--wheel", type=click.Path(dir_okay=False), default=None,
              help="With --setup: an nvidia-pytriton wheel already downloaded (default: pip downloads it).")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; loopback unless you say otherwise (0.0.0.0: every interface).")
@click.option("--check", is_flag=True, help="Start, wait until every model is ready, answer one example request "
                                            "per text model, stop, and exit 0: a pre-deployment smoke test.")
@click.option("--log", type=click.Path(dir_okay=False), default=None, help="Write the server's log here.")
@friendly_errors
def serve_cmd(repo, setup, if_missing, wheel, http_port, grpc_port, metrics_port, host, check, log):
    """Serve a model repository written by torchship triton on a real tritonserver: waits until every model is
    ready (or prints the load error of the one that failed), prints the URLs and an example request, and stops
    cleanly on Ctrl-C or SIGTERM. Model folders torchship did not write are served as they are when this server
    has their backend (Python); the others are left out, one line each naming the backend they need."""
    from torchship.errors import InputError
    from torchship.serving.server import Install, Ports, Server, home, setup as setup_server

    if setup:
        install = Install(home())
        outdated = install.outdated() if if_missing and install.complete() else None
        if if_missing and install.complete() and not outdated:
            click.echo(f"the server is set up in {home()}")
        else:
            if outdated:
                PROGRESS.step(f"{outdated}: building it again")
            install = setup_server(wheel, progress=PROGRESS.step)
            click.echo(f"the server is set up in {install.root}")
        if repo is None:
            return
    if repo is None:
        raise InputError("give the model repository to serve (write one with: torchship triton FOLDER --output "
                         "REPO), or --setup")
    server = Server(repo, Ports(http_port, grpc_port, metrics_port), host=host, log=Path(log) if log else None)
    server.start(progress=PROGRESS.step)
    try:
        from torchship.serving.client import example_requests

        click.echo(f"ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics "
                   f"http://{host}:{metrics_port}/metrics")
        click.echo(f"models: {', '.join(server.models)}"
                   + (f" ({len(server.skipped)} left out: see above)" if server.skipped else ""))
        for line in example_requests(server):
            click.echo(line)
        if check:
            from torchship.serving.client import smoke_test

            for line in smoke_test(server):
                click.echo(line)
            return
        click.echo("serving; Ctrl-C stops it")
        threading.Event().wait()  # until Ctrl-C or SIGTERM (friendly_errors turns both into KeyboardInterrupt)
    except KeyboardInterrupt:
        code = server.stop()
        click.echo(f"torchship: stopped the server (exit {code})", err=True)
        return
    finally:
        server.stop()


@main.command("loadtest", epilog=examples(
    'torchship loadtest http://127.0.0.1:8000 --model auto --concurrency 1,4 --duration 2 --warmup 1 '
    '--output loadtest'))
@click.argument("url")
@click.option("--model", required=True, help="The model's name on the server.")
@click.option("--concurrency", default="1,4,8,16", show_default=True,
              help="Comma-separated concurrency levels: clients each sending one request and waiting.")
@click.option("--duration", type=click.FloatRange(min=0.1, max=600), default=20.0, show_default=True,
              help="Seconds counted per level.")
@click.option("--warmup", type=click.FloatRange(min=0, max=120), default=3.0, show_default=True,
              help="Seconds per level before counting.")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option("--texts", "texts_file", type=click.Path(dir_okay=False), default=None,
              help="One text per line (default: torchship's packaged 60 sentences).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False), default=None,
              help="Image models: a folder of image files (PNG, JPEG, WebP, ...) sent as their bytes instead of texts.")
@click.option("--batch", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Texts (or images) per request.")
@click.option("--max-requests", type=click.IntRange(min=1), default=200_000, show_default=True,
              help="Per level: the level ends at this count even before its time.")
@click.option("--reference", type=click.Path(), default=None,
              help="The torchship folder to check answers against (default: the one the server's model names, "
                   "if it is on this machine).")
@click.option("--no-check", is_flag=True, help="Do not compare answers with the local predictor.")
@click.option("--output", "-o", type=click.Path(), default="loadtest", show_default=True)
@friendly_errors
def loadtest_cmd(url, model, concurrency, duration, warmup, protocol, texts_file, images_dir, batch, max_requests,
                 reference, no_check, output):
    """Closed-loop load test of a served text model (an image model with --images): requests/s, texts/s (images/s),
    p50/p90/p99 latency and errors per concurrency level, and a check that the answers match the local predictor.
    Writes loadtest.{json,md,png}."""
    from torchship.exporters.inputs import parse_shape_list
    from torchship.serving.client import load_texts, local_reference, model_source, target_for
    from torchship.serving.loadtest import LoadOptions, ServerError, failure, markdown, run_loadtest, write_report

    no_file(reference, "--reference")
    no_file(output, "--output")

    options = LoadOptions(tuple(parse_shape_list(concurrency, what="--concurrency")), duration, warmup, batch,
                          max_requests, unit="image" if images_dir is not None else "text").checked()
    if images_dir is not None and texts_file is not None:
        from torchship.errors import InputError

        raise InputError("--texts and --images each give what is sent; give one of them")
    if images_dir is not None:  # image files read as bytes, sent as IMAGE rows, checked through the same steps
        from torchship.serving.image_client import image_reference, image_target_for, load_images

        texts, target_for, local_reference = load_images(images_dir), image_target_for, image_reference
    else:
        texts = load_texts(texts_file)
    target = target_for(url, model, protocol)
    ref = None
    if not no_check:
        source = (reference, None) if reference else model_source(url, model, protocol)
        if source is None:
            PROGRESS.step("the model's torchship folder is not on this machine: answers are not checked "
                          "(pass --reference FOLDER)")
        else:
            ref = local_reference(*source)
    report = run_loadtest(target, texts, options, name=url, model=model, protocol=protocol,
                          reference=ref, progress=PROGRESS.step, fail_on_errors=False)
    paths = write_report(report, output)  # written first: a failed run's numbers are what the user needs
    click.echo(markdown(report))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())}")
    if any(v.errors for v in report.levels):
        click.echo(json.dumps({v.concurrency: v.first_error for v in report.levels if v.errors}), err=True)
    if report.check and not report.check["passed"]:
        from torchship.errors import ValidationError

        raise ValidationError(f"the server's answers differ from {report.check.get('against', 'the local predictor')}"
                              f": {report.check['measure']} {report.check['value']:.6f}")
    problem = failure(report)
    if problem:
        raise ServerError(f"{problem}; the numbers are in {paths['md']}")
