"""The click group and what every command shares: one-line errors, quiet libraries, progress on stderr."""

from __future__ import annotations

import functools
import os
import signal
import sys

import click

from torchship._progress import Progress
from torchship.errors import EXIT_FAILED, EXIT_INTERRUPTED, TorchshipError

PROGRESS = Progress(step=lambda text: click.echo(f"torchship: {text}", err=True))
CONTEXT = {"help_option_names": ["-h", "--help"]}


def quiet_libraries() -> None:
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


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a stopped job unwinds like Ctrl-C: staged files go, folders stay as they were


def friendly_errors(fn):
    """Turn torchship errors into one line on stderr and their exit code (torchship.errors); a disk that
    fills up or a folder that cannot be written is one line too. Bugs keep the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except TorchshipError as exc:
            click.echo(f"torchship: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a full disk, a read-only mount, a permission: the machine's, not a bug
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"torchship: error: {exc.strerror or exc}{where}; check the path, its permissions and the "
                       "free space (nothing partial was left)", err=True)
            sys.exit(EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("torchship: interrupted; nothing was changed", err=True)
            sys.exit(EXIT_INTERRUPTED)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="torchship")
def main():
    """torchship: PyTorch / Hugging Face models to validated, optimized ONNX, with a latency report.

    Also installed: export-bert, export-decoder (alias export-gpt2) and export-unet, which are torchship export
    for one family each (BERT-like encoders; GPT-2 and Llama-like decoders; diffusion UNets), with its defaults
    and help."""
    quiet_libraries()


def no_file(path, flag: str) -> None:
    """A folder option given a file's path: torchship's one line, where click's own check prints three."""
    from pathlib import Path

    from torchship.errors import InputError

    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise InputError(f"{flag} {path} is a file; pass a folder path for {flag}")


def examples(*lines: str) -> str:
    """A command's help epilog: example command lines as typed (tests/test_help_examples.py runs them all)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def split(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated flag values; None when there are none."""
    items = tuple(t.strip() for t in (text or "").split(",") if t.strip())
    return items or None


def print_artifact(artifact) -> None:
    """What the folder holds, one line per variant under the backend name that runs it."""
    from torchship.manifest_sections import Validation
    from torchship.backends import backend_of_variant

    m = artifact.manifest
    click.echo(f"{artifact.folder}: {m.family} ({m.model_type}) {m.task}, exporter {m.export['exporter']} "
               f"opset {m.export['opset']}")
    for name, v in m.variants.items():
        val = v.validation or Validation(passed=False)
        line = f"  {backend_of_variant(name).name:20s} {v.file:28s} {v.size_bytes / 1e6:8.1f} MB  "
        if val.approximate:
            line += f"approximate: cosine {val.min_cosine:.6f} vs export, "
        if val.decode:  # a weight-only variant, judged on a decode against the fp32 export
            line += f"logit cosine {val.decode.logit_cosine_mean:.4f}"
        else:
            line += f"max abs {val.max_abs if val.max_abs is not None else float('nan'):.2e}"
        if v.fusion and v.fusion.reported:
            c = v.fusion.counts
            kinds = "+".join(op for op in ("Attention", "MultiHeadAttention", "GroupQueryAttention") if c.get(op))
            line += (f"  fused: Attention {v.fusion.attention}/{v.fusion.expected_attention}"
                     f"{f' ({kinds})' if kinds else ''}, EmbedLayerNorm {c['EmbedLayerNormalization']}, SkipLayerNorm "
                     f"{c['SkipLayerNormalization'] + c.get('SkipSimplifiedLayerNormalization', 0)}, "
                     f"Gelu {c['Gelu'] + c['FastGelu'] + c['BiasGelu'] + c['BiasFastGelu']}")
        click.echo(line)
        if v.fusion and v.fusion.warning:
            click.echo(f"  {v.fusion.warning}", err=True)
    for name, reason in m.skipped.items():
        click.echo(f"  {backend_of_variant(name).name:20s} skipped: {reason}", err=True)


def print_dispatch(artifact) -> None:
    """The measured dispatch table of the folder, if optimize recorded one."""
    table = artifact.manifest.dispatch
    if not table:
        return
    from torchship.benchmarks.dispatch_report import all_times_markdown, dispatch_markdown

    click.echo("")
    click.echo(dispatch_markdown(table))
    click.echo("\nEvery candidate's median:\n")
    click.echo(all_times_markdown(table))
