"""transformers' own generate() over an exported decoder on ONNX Runtime: greedy, beam search and repetition
penalty give eager PyTorch's tokens; sampling is reproducible with a seed; stop strings and streamers work;
what the graph cannot do is refused with one line."""

from __future__ import annotations

import json

import pytest
import torch

from torchship.errors import EXIT_BAD_INPUT, InputError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROMPTS = ["the dog is running", "a good"]


def _varied(tmp_path_factory, model_type: str):
    """A tiny decoder whose matrices are scaled up from their initialisation, so that greedy decoding walks
    through varied tokens instead of repeating one: the comparisons below then mean something."""
    from transformers import AutoModelForCausalLM

    from tiny import save_decoder_dir
    from torchship.exporters.export import export
    from torchship.runtimes.hf_generate import causal_lm

    folder = save_decoder_dir(tmp_path_factory.mktemp(f"varied-{model_type}") / "model", model_type)
    eager = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        for p in eager.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    eager.save_pretrained(folder)
    export(str(folder), folder.parent / "onnx")
    model, tokenizer = causal_lm(folder.parent / "onnx", "ort")
    return model, eager, tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _varied(tmp_path_factory, "gpt2")


@pytest.mark.parametrize("settings", [dict(do_sample=False), dict(num_beams=3, do_sample=False),
                                      dict(do_sample=False, repetition_penalty=1.5),
                                      dict(num_beams=2, num_return_sequences=2, do_sample=False)],
                         ids=["greedy", "beam", "repetition-penalty", "beam-2-returned"])
def test_generate_equals_eager_pytorch_token_for_token(pair, settings):
    model, eager, tokenizer = pair
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    common = dict(max_new_tokens=16, min_new_tokens=16, pad_token_id=tokenizer.pad_token_id, **settings)
    ours = model.generate(**enc, **common)
    theirs = eager.generate(**enc, **common)
    assert torch.equal(ours, theirs), (ours[:, -16:], theirs[:, -16:])
    assert len(set(ours[:, -16:].flatten().tolist())) > 2  # a real sequence, not one token repeated
    assert ours.shape[1] == enc["input_ids"].shape[1] + 16


def test_a_grouped_query_decoder_generates_as_eager_pytorch(tmp_path_factory):
    """Llama: 4 query heads over 2 KV heads, rotary positions; the cache stays grouped."""
    model, eager, tokenizer = _varied(tmp_path_factory, "llama")
    assert model.kv_heads < eager.config.num_attention_heads
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    for settings in (dict(do_sample=False), dict(num_beams=3, do_sample=False)):
        common = dict(max_new_tokens=16, min_new_tokens=16, pad_token_id=tokenizer.pad_token_id, **settings)
        ours, theirs = model.generate(**enc, **common), eager.generate(**enc, **common)
        assert torch.equal(ours, theirs), settings
        assert len(set(ours[:, -16:].flatten().tolist())) > 2


def test_sampling_is_reproducible_with_a_seed_and_streams(pair):
    from transformers import TextIteratorStreamer

    model, _, tokenizer = pair
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(model.generate(**enc, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=10, top_p=0.9,
                                   pad_token_id=tokenizer.pad_token_id))
    assert torch.equal(runs[0], runs[1])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    torch.manual_seed(7)
    out = model.generate(**enc, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=10, top_p=0.9,
                         pad_token_id=tokenizer.pad_token_id, streamer=streamer)
    streamed = "".join(streamer)
    assert torch.equal(out, runs[0])
    assert streamed.strip() == tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_stop_strings_and_stop_ids_end_generation(pair):
    model, _, tokenizer = pair
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    free = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = free[0, enc["input_ids"].shape[1]:]
    words = [t for t in new.tolist() if not tokenizer.convert_ids_to_tokens(t).startswith(("##", "["))]
    stop_id = int(words[-1] if words else new[3])  # a whole word: a stop string matches its text
    first = next(i for i, t in enumerate(new.tolist()) if t == stop_id)
    stopped = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop_id)
    assert stopped.shape[1] == enc["input_ids"].shape[1] + first + 1
    word = tokenizer.decode(new[first:first + 1]).strip()
    by_string = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               stop_strings=[word], tokenizer=tokenizer)
    assert by_string.shape[1] <= enc["input_ids"].shape[1] + first + 1


@pytest.mark.parametrize("settings, words", [
    (dict(output_attentions=True, return_dict_in_generate=True), "not attentions"),
    (dict(use_cache=False), "always uses its KV cache"),
    (dict(cache_implementation="static"), "drop cache_implementation"),
])
def test_what_the_graph_cannot_do_is_refused_with_one_line(pair, settings, words):
    model, _, tokenizer = pair
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    with pytest.raises(InputError, match=words):
        model.generate(**enc, max_new_tokens=2, **settings)


def test_a_prompt_past_the_context_is_refused(pair):
    model, _, tokenizer = pair
    ids = torch.ones(1, model.max_positions, dtype=torch.long)
    with pytest.raises(InputError, match=f"reads at most {model.max_positions}"):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2)
    ids = torch.ones(1, model.max_positions - 2, dtype=torch.long)
    with pytest.raises(InputError, match="ask for fewer new tokens"):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8)


def test_generate_command_samples_beams_and_streams(decoder_export):
    from click.testing import CliRunner

    from torchship.cli import main

    def run(*args):
        return CliRunner().invoke(main, ["generate", str(decoder_export), "the dog is", "--max-new-tokens", "6",
                                         *args])

    sampled = [run("--sample", "--temperature", "0.9", "--top-k", "20", "--seed", "5", "--json") for _ in range(2)]
    assert all(r.exit_code == 0 for r in sampled), sampled[0].output
    first = json.loads(sampled[0].stdout)["results"][0]
    assert first["tokens"] == json.loads(sampled[1].stdout)["results"][0]["tokens"] and len(first["tokens"]) == 6
    beams = run("--num-beams", "3", "--repetition-penalty", "1.3")
    assert beams.exit_code == 0 and "transformers generate: do_sample=False, num_beams=3" in beams.output
    streamed = run("--stream", "--sample", "--seed", "5")
    assert streamed.exit_code == 0 and streamed.stdout.startswith("the dog is")
    for bad, words in ((["--top-p", "0.9"], "add --sample"), (["--stream", "--json"], "give one prompt")):
        r = run(*bad)
        assert r.exit_code == EXIT_BAD_INPUT and words in r.output, r.output
