"""A command run in this process (click's CliRunner), answering as a subprocess would: returncode, stdout and stderr.

A fresh process proves nothing more for most commands and costs a cold import of torch each time. An exception that
escapes a command is written into stderr as its traceback, so a test asserting "no traceback" still sees one. Tests
of what only a process shows (the console scripts themselves, signals) keep subprocess.run.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from click.testing import CliRunner

from torchship import cli

COMMANDS = {"torchship": cli.main, "export-bert": cli.export_bert, "export-gpt2": cli.export_gpt2,
            "export-decoder": cli.export_decoder, "export-unet": cli.export_unet}


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run(*args, env: dict | None = None) -> Ran:
    result = CliRunner().invoke(COMMANDS[args[0]], [str(a) for a in args[1:]],
                                env={"HF_HUB_OFFLINE": "1", **(env or {})})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return Ran(result.exit_code, result.stdout, stderr)
