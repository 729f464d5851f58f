"""Tokenizers that fit the model, hints that work when followed, and one rule for the text generate prints
(issue 27, items 5, 6 and 9, and export --tokenizer). Every hint a test here triggers, it then runs as printed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from torchship.cli import main
from torchship.errors import EXIT_BAD_INPUT

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *words) -> str:
    """The one error line of a refused command (exit 2, no traceback), holding every one of ``words``."""
    assert result.exit_code == EXIT_BAD_INPUT and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _bert_dir(folder: Path, vocab_size: int, *, tokenizer: bool = True) -> Path:
    """A tiny BERT whose embedding table has ``vocab_size`` rows, with or without the tiny tokenizer."""
    from transformers import AutoConfig, AutoModel

    from tiny import TINY_CONFIGS, make_tokenizer

    config = AutoConfig.for_model("bert", **TINY_CONFIGS["bert"], vocab_size=vocab_size, pad_token_id=0)
    AutoModel.from_config(config).save_pretrained(folder)
    if tokenizer:
        make_tokenizer(folder).save_pretrained(folder)
    return folder


def _table(tokenizer) -> int:
    return max(tokenizer.get_vocab().values()) + 1


def _decoder_dir(folder: Path, *, extra_rows: int = 0, favour: str | None = None, tokenizer: bool = True) -> Path:
    """A tiny GPT-2 over the tiny tokenizer's table plus ``extra_rows`` (a padded vocabulary); ``favour`` makes
    the padding rows ("padding", as an undertrained padded row can be) or one token the likeliest next ones."""
    import torch

    from tiny import make_decoder, make_tokenizer

    tok = make_tokenizer(folder)
    model = make_decoder("gpt2", vocab_size=_table(tok) + extra_rows)
    if favour:
        rows = slice(_table(tok), None) if favour == "padding" else tok.convert_tokens_to_ids(favour)
        with torch.no_grad():  # the last hidden state becomes a constant; the favoured rows align with it
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.fill_(1.0)
            model.transformer.wte.weight[rows] = 1.0
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


# Item 5: a tokenizer whose ids exceed the model's table is refused at export and at load; a larger table is fine.


def test_a_tokenizer_larger_than_the_model_is_refused_at_export(minilm_dir, tmp_path):
    # bert-base-cased's table (28996 rows) with MiniLM's tokenizer (30522 ids), as the issue tried it
    small = _bert_dir(tmp_path / "cased", 28996, tokenizer=False)
    out = tmp_path / "out"
    line = one_line_error(cli("export", "--model", small, "--tokenizer", minilm_dir, "--output", out, "--no-optimize"),
                          "ids up to 30521", "28996 rows", "--tokenizer FOLDER")
    assert str(minilm_dir) in line and not out.exists()
    # the checkpoint's own tokenizer is checked alike
    shutil.copy(minilm_dir / "tokenizer.json", small / "tokenizer.json")
    one_line_error(cli("export", "--model", small, "--output", out, "--no-optimize"), "the checkpoint's tokenizer",
                   "28996 rows")
    assert not out.exists()


def test_a_padded_vocabulary_is_fine_and_export_tokenizer_attaches_one(minilm_dir, tmp_path):
    padded = _bert_dir(tmp_path / "padded", 30528, tokenizer=False)  # 6 rows more than MiniLM's 30522 ids
    out = tmp_path / "out"
    r = cli("export", "--model", padded, "--tokenizer", minilm_dir, "--output", out, "--no-optimize")
    assert r.exit_code == 0, r.output
    assert (out / "tokenizer.json").is_file()
    r = cli("predict", out, "the tokenizer came from another folder", "--json")
    assert r.exit_code == 0, r.output


def test_a_tokenizer_saved_later_is_checked_at_load(exported, minilm_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = shutil.copytree(exported("bert"), tmp_path / "bert")  # a table of 120 rows
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    one_line_error(cli("predict", folder, "a text"), "ids up to 30521", "120 rows", "--tokenizer TOKENIZER_FOLDER")


def test_generate_never_picks_ids_past_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from torchship.exporters.export import export

    src = _decoder_dir(tmp_path / "padded", extra_rows=16, favour="padding")
    export(str(src), tmp_path / "onnx")
    table = _table(AutoTokenizer.from_pretrained(src))
    for args in ([], ["--sample", "--seed", "1"], ["--num-beams", "2"]):
        r = cli("generate", tmp_path / "onnx", "the dog is", "--max-new-tokens", "5", "--json", *args)
        assert r.exit_code == 0, r.output
        import json

        tokens = json.loads(r.stdout)["results"][0]["tokens"]
        assert len(tokens) == 5 and max(tokens) < table, (args, tokens)


# Item 6: the hint of a folder without a tokenizer works when followed, both ways it names.


def test_the_missing_tokenizer_hints_work_as_printed(tmp_path):
    from transformers import AutoTokenizer

    from torchship.exporters.export import export

    src = _decoder_dir(tmp_path / "with", tokenizer=True)
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    for name in TOKENIZER_FILES:
        (bare / name).unlink(missing_ok=True)
    folder = tmp_path / "onnx"
    export(str(bare), folder)
    line = one_line_error(cli("generate", folder, "hello", "--max-new-tokens", "3"), "holds no tokenizer")
    assert f"tokenizer.save_pretrained('{folder}')" in line
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)  # the first hint, as printed
    r = cli("generate", folder, "hello", "--max-new-tokens", "3")
    assert r.exit_code == 0, r.output

    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    line = one_line_error(cli("generate", folder, "hello", "--max-new-tokens", "3"), "holds no tokenizer")
    command = line.split("export again with one: ", 1)[1].replace("TOKENIZER_FOLDER", str(src))
    assert command.startswith("torchship export --model ")
    r = cli(*command.split()[1:])  # the second hint, as printed (names the folder's source checkpoint)
    assert r.exit_code == 0, r.output
    r = cli("generate", folder, "hello", "--max-new-tokens", "3")
    assert r.exit_code == 0, r.output


def test_a_weight_only_backend_on_an_encoder_names_what_works(exported, tmp_path):
    folder = shutil.copytree(exported("bert"), tmp_path / "bert")
    r = cli("bench", folder, "--backends", "ort-wo-int4", "--min-seconds", "0")
    line = one_line_error(r, "weight-only", "decoders only", "use ort-int8", "torchship quantize")
    assert "--method weight-only" not in line  # the old hint: a command that refuses encoders
    r = cli("quantize", folder)  # the hint, as printed
    assert r.exit_code == 0, r.output
    r = cli("bench", folder, "--backends", "ort-int8", "--batch-sizes", "1", "--seq-lens", "8", "--min-seconds", "0",
            "--min-iterations", "2", "--warmup", "1", "--threads", "1")
    assert r.exit_code == 0 and "| ort-int8 |" in r.output, r.output


# Item 9: one decoding rule, streamed or not.


def test_streamed_and_printed_text_are_the_same(tmp_path):
    """New tokens that are word pieces (##u) join the prompt's last word, streamed or not."""
    from torchship.exporters.export import export

    folder = tmp_path / "onnx"
    export(str(_decoder_dir(tmp_path / "model", favour="##u")), folder)
    prompt = "hello world"
    printed = cli("generate", folder, prompt, "--max-new-tokens", "8")
    streamed = cli("generate", folder, prompt, "--max-new-tokens", "8", "--stream")
    assert printed.exit_code == 0 and streamed.exit_code == 0, (printed.output, streamed.output)
    assert printed.stdout == streamed.stdout and "##" not in printed.stdout
    assert printed.stdout.startswith(prompt + "uu")  # the pieces joined the word


# Smaller things: an output that is a file is one line, as one under a file is; help says what it does.


def test_an_output_that_is_a_file_is_one_line(model_dirs, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("keep me")
    for args in (["export", "--model", model_dirs("bert"), "--output", afile],
                 ["export", "--model", model_dirs("bert"), "--output", afile / "under"]):
        one_line_error(cli(*args), "is a file")
    assert afile.read_text() == "keep me"


def test_help_names_the_family_commands_and_speaks_each_familys_words():
    from torchship import cli as commands

    top = CliRunner().invoke(main, ["--help"], terminal_width=1000).output
    assert all(name in top for name in ("export-bert", "export-decoder", "export-unet"))
    for command, absent in ((commands.export_decoder, ("encoders", "torchscript for", "classification")),
                            (commands.export_unet, ("encoders", "decoders", "classification", "--tokenizer"))):
        text = CliRunner().invoke(command, ["--help"], terminal_width=1000).output
        assert not [w for w in absent if w in text], [w for w in absent if w in text]
        assert "[default: optimize]" in text
    assert "[default: optimize]" in CliRunner().invoke(main, ["export", "--help"], terminal_width=1000).output
