import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from torchship.artifact import Artifact
from torchship.errors import InputError
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.generate import Generator, encode_prompts

PROMPTS = ["the cat is eating food and the dog", "hello"]  # different lengths: the second is left-padded


def hf_greedy(model_dir, ids, mask, n, **kw):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=n,
                             do_sample=False, pad_token_id=0, **kw)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("backend", ["ort", "ort-optimized", "torch"])
def test_greedy_generation_matches_transformers_token_for_token(decoder_export, decoder_dir, backend):
    art = Artifact.open(decoder_export)
    tok = AutoTokenizer.from_pretrained(decoder_export)
    ids, mask = encode_prompts(tok, PROMPTS)
    assert mask[1, 0] == 0 and mask[0].all()  # a batch of two prompts of different lengths, left-padded
    with create_predictor(art, backend, RuntimeOptions(threads=2)) as p:
        result = Generator.from_artifact(art, p).generate(ids, mask, max_new_tokens=16)
    expected = hf_greedy(decoder_dir, ids, mask, 16)
    np.testing.assert_array_equal(result.tokens, expected)
    assert result.new_tokens == 16 and len(result.step_s) == 15 and result.prefill_s > 0


def test_rows_stop_at_end_of_sequence_like_transformers(decoder_export, decoder_dir):
    art = Artifact.open(decoder_export)
    tok = AutoTokenizer.from_pretrained(decoder_export)
    ids, mask = encode_prompts(tok, PROMPTS)
    with create_predictor(art, "ort") as p:
        free = Generator.from_artifact(art, p).generate(ids, mask, max_new_tokens=8).tokens
        eos = int(free[1, 2])  # the third token of row 1 ends that row early
        gen = Generator(p, num_layers=2, num_heads=4, head_dim=8, eos_token_id=eos, pad_token_id=0)
        result = gen.generate(ids, mask, max_new_tokens=8)
    expected = hf_greedy(decoder_dir, ids, mask, 8, eos_token_id=eos)
    assert expected.shape[1] == result.tokens.shape[1]
    np.testing.assert_array_equal(result.tokens, expected)
    assert (result.tokens[1, 3:] == 0).all()


def test_generation_input_errors(decoder_export):
    art = Artifact.open(decoder_export)
    tok = AutoTokenizer.from_pretrained(decoder_export)
    with create_predictor(art, "ort") as p:
        gen = Generator.from_artifact(art, p)
        ids, mask = encode_prompts(tok, PROMPTS)
        with pytest.raises(InputError, match="left-padded"):
            gen.generate(ids, mask[:, ::-1].copy(), max_new_tokens=2)
        with pytest.raises(InputError, match="max-new-tokens"):
            gen.generate(ids, mask, max_new_tokens=0)
    with pytest.raises(InputError, match="non-empty prompts"):
        encode_prompts(tok, ["ok", ""])


def test_generate_cli(decoder_export, decoder_dir, tmp_path):
    exe = str(Path(sys.executable).parent / "torchship")
    proc = subprocess.run([exe, "generate", str(decoder_export), *PROMPTS, "--max-new-tokens", "6", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    tok = AutoTokenizer.from_pretrained(decoder_export)
    ids, mask = encode_prompts(tok, PROMPTS)
    expected = hf_greedy(decoder_dir, ids, mask, 6)
    assert [r["tokens"] for r in data["results"]] == expected.tolist()
    proc = subprocess.run([exe, "generate", str(decoder_export), "hello", "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("hello") and "per new token" in proc.stderr
    proc = subprocess.run([exe, "predict", str(decoder_export), "hello"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "use torchship generate" in proc.stderr and "Traceback" not in proc.stderr


def test_gpt2_style_tokenizer_without_pad_token(tmp_path):
    """GPT-2's BPE tokenizer has no pad token: prompts are padded with its end token, on the left."""
    from tiny import save_decoder_dir
    from torchship.exporters.export import export

    src = save_decoder_dir(tmp_path / "bpe-gpt2", bpe=True)
    assert AutoTokenizer.from_pretrained(src).pad_token is None
    out = tmp_path / "onnx"
    export(str(src), out)
    prompts = ["the good dog is running fast and", "hello world"]
    exe = str(Path(sys.executable).parent / "torchship")
    proc = subprocess.run([exe, "generate", str(out), *prompts, "--max-new-tokens", "8", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(src)
    ids, mask = encode_prompts(tok, prompts)
    assert mask[1, 0] == 0 and tok.pad_token == tok.eos_token
    expected = hf_greedy(src, ids, mask, 8)
    results = json.loads(proc.stdout)["results"]
    assert [r["tokens"] for r in results] == expected.tolist()
    assert results[0]["text"] == tok.decode(expected[0], skip_special_tokens=True)
