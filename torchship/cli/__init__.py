"""Thin click commands: flags -> a frozen options object -> one library call.

The group and what every command shares live in :mod:`torchship.cli._app`; the commands, by what they
do, in ``export``, ``precision``, ``run``, ``generation``, ``deploy`` and ``serve``. The console scripts named in setup.cfg
(torchship, export-bert, export-gpt2, export-unet) are the functions below; export-decoder is export-gpt2
under the name that says what it exports now (GPT-2 and the Llama-shaped decoders).
"""

from __future__ import annotations

from torchship.cli import deploy, generation, precision, run, serve  # noqa: F401  (importing a module registers its commands)
from torchship.cli._app import main
from torchship.cli.export import family_command

export_bert = family_command("export-bert")
export_gpt2 = family_command("export-gpt2")
export_decoder = family_command("export-decoder")
export_unet = family_command("export-unet")


def export_bert_main():
    export_bert()


def export_gpt2_main():
    export_gpt2()


def export_decoder_main():
    export_decoder()


def export_unet_main():
    export_unet()


__all__ = ["main", "export_bert_main", "export_gpt2_main", "export_decoder_main", "export_unet_main"]
