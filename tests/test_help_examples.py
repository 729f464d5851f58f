"""Every example in every command's --help runs as written, in one working folder, on the tiny models
(the model ids they name are mapped to tiny local checkpoints of the same family)."""

from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner

from torchship import cli
from torchship.errors import EXIT_MISSING
from torchship.serving.server import Install, Ports, Server, free_port, home

COMMANDS = {"torchship": cli.main, "export-bert": cli.export_bert, "export-gpt2": cli.export_gpt2,
            "export-unet": cli.export_unet}
# The order a user would follow: exports first, then what works on them.
ORDER = ["export", "export-bert", "export-gpt2", "export-unet", "optimize", "quantize", "tensorrt", "bench",
         "predict", "generate", "auto", "triton", "serve", "loadtest", "demo"]


def help_examples() -> list[tuple[str, list[str]]]:
    """(command name, argv) of every example line, in ORDER."""
    found = {}
    for name, command in [("export-bert", cli.export_bert), ("export-gpt2", cli.export_gpt2),
                          ("export-unet", cli.export_unet), *cli.main.commands.items()]:
        text = CliRunner().invoke(command, ["--help"], terminal_width=1000).output
        lines = text.split("Examples:\n", 1)[1].splitlines() if "Examples:" in text else []
        found[name] = [shlex.split(line) for line in lines if line.startswith("  ") and line.strip()]
    assert set(found) == set(ORDER), "a command is missing from ORDER"
    assert all(found[name] for name in ORDER), [name for name in ORDER if not found[name]]
    return [(name, argv) for name in ORDER for argv in found[name]]


def test_every_command_has_examples():
    assert len(help_examples()) >= len(ORDER)


@pytest.mark.slow
def test_every_help_example_runs(model_dirs, decoder_dir, unet_dirs, tmp_path, monkeypatch):
    models = {"bert-base-cased": str(model_dirs("bert")), "gpt2": str(decoder_dir),
              "./sd2-inpainting": str(unet_dirs(4)),
              "./my-finetuned-roberta": str(model_dirs("roberta", "text-classification")),
              "./my-bert-squad": str(model_dirs("bert", "question-answering"))}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.txt").write_text("a good movie\nthe dog is running\nhello world\nthis is a test\n")
    (tmp_path / "auto.yml").write_text("device: cpu\ninputs:\n  input_ids: {min: [1, 8], use: [1, 16], max: [2, 32]}\n"
                                       "budget: 0.9\nthreads: 1\nmin_seconds: 0.2\n")
    server = None
    try:
        for name, argv in help_examples():
            if name in ("serve", "loadtest") and not Install(home()).complete():
                continue  # tests/test_serving.py says why it skips
            if name == "serve" and "--check" not in argv:
                continue  # serves until stopped: test_serving.py stops one with SIGTERM
            if name == "loadtest":
                if server is None:
                    server = Server("model_repository", Ports(free_port(), free_port(), free_port())).start()
                argv = [server.http_url if a.startswith("http://127.0.0.1:") else a for a in argv]
            argv = [models.get(a, a) for a in argv]
            runner = COMMANDS[argv[0]]
            args = argv[1:] + (["--min-seconds", "0", "--min-iterations", "2", "--warmup", "1", "--threads", "1"]
                               if name == "bench" else [])
            r = CliRunner().invoke(runner, args)
            if name == "tensorrt" and r.exit_code == EXIT_MISSING:  # no GPU here: it says so, and which extra
                assert "torchship[tensorrt]" in r.output
                continue
            assert r.exit_code == 0, f"{' '.join(argv)}\n{r.output}"
    finally:
        if server is not None:
            server.stop()
