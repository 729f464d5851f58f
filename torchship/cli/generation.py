"""``torchship generate``: text from a decoder folder, greedy with its own timing, or through transformers'
``generate`` for sampling, beam search, repetition penalty, stop strings and streaming."""

from __future__ import annotations

import json

import click

from torchship.cli._app import examples, friendly_errors, main
from torchship.cli.run import _resolve_backend
from torchship.errors import InputError


@main.command("generate", epilog=examples(
    'torchship generate onnx/gpt2 "a prompt" --max-new-tokens 8',
    'torchship generate onnx/gpt2 "a prompt" --max-new-tokens 8 --sample --temperature 0.8 --top-p 0.9 --seed 1 '
    '--stream',
    'torchship generate onnx/gpt2 "a prompt" --max-new-tokens 8 --num-beams 3 --repetition-penalty 1.2'))
@click.argument("folder", type=click.Path())
@click.argument("prompts", nargs=-1, required=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--backend", default="auto", show_default=True,
              help="auto: the fastest variant judged within its budget, as optimize and quantize timed them on "
                   "this machine (a line says which and why), torch, or any ort backend name.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--sample", is_flag=True, help="Sample the next token (with --temperature, --top-k, --top-p) "
                                             "instead of taking the likeliest.")
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), default=None)
@click.option("--top-k", type=click.IntRange(min=1), default=None)
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=None)
@click.option("--seed", type=int, default=None, help="Seed for --sample: the same seed gives the same text.")
@click.option("--num-beams", type=click.IntRange(min=1), default=1, show_default=True, help="Beam search width.")
@click.option("--repetition-penalty", type=click.FloatRange(min=0.0, min_open=True), default=None)
@click.option("--stop", multiple=True, help="Stop a text when it produces this string (repeatable).")
@click.option("--stream", is_flag=True, help="Print the tokens of one prompt as they come.")
@click.option("--json", "as_json", is_flag=True, help="Print token ids and texts as JSON.")
@friendly_errors
def generate_cmd(folder, prompts, max_new_tokens, backend, device, sample, temperature, top_k, top_p, seed,
                 num_beams, repetition_penalty, stop, stream, as_json):
    """Text from PROMPTS with the decoder in FOLDER, using its KV cache. Plain greedy runs torchship's own loop
    and times it; sampling, beams, a repetition penalty, stop strings or streaming run transformers'
    generate() over the same model, step by step."""
    from torchship.artifact import Artifact
    from torchship.exporters.spec import require_family
    from torchship.runtimes import RuntimeOptions

    if not sample and any(v is not None for v in (temperature, top_k, top_p, seed)):
        raise InputError("--temperature, --top-k, --top-p and --seed shape sampling: add --sample")
    if stream and (len(prompts) > 1 or as_json or num_beams > 1):
        raise InputError("--stream prints one prompt's tokens as they come: give one prompt, without --json "
                         "or --num-beams")
    artifact = Artifact.open(folder)
    require_family(artifact, "generate needs a decoder (export-decoder)", text_api="generate")
    backend = _resolve_backend(artifact, backend)
    options = RuntimeOptions(device=device)
    if sample or num_beams > 1 or repetition_penalty is not None or stop or stream:
        settings = dict(do_sample=sample, num_beams=num_beams, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty, stop=list(stop), seed=seed)
        tokens, texts, note = _with_transformers(folder, backend, options, list(prompts), max_new_tokens, settings,
                                                 stream)
    else:
        tokens, texts, note = _greedy(artifact, backend, options, list(prompts), max_new_tokens)
    if as_json:
        click.echo(json.dumps({"backend": backend, "results": [
            {"prompt": p, "tokens": t, "text": x} for p, t, x in zip(prompts, tokens, texts)]}))
        return
    if not stream:  # the prompt as typed, then what the tokenizer's own decoding adds (streamed alike)
        for prompt, text in zip(prompts, texts):
            click.echo(f"{prompt}{text}")
    click.echo(f"(backend {backend}; {note})", err=True)


def _greedy(artifact, backend, options, prompts, max_new_tokens):
    from torchship.runtimes import create_predictor
    from torchship.runtimes.generate import Generator, continuation, encode_prompts
    from torchship.runtimes.text import load_tokenizer

    tokenizer = load_tokenizer(artifact)
    ids, mask = encode_prompts(tokenizer, prompts)
    with create_predictor(artifact, backend, options) as predictor:
        result = Generator.from_artifact(artifact, predictor, tokenizer).generate(ids, mask,
                                                                                   max_new_tokens=max_new_tokens)
    texts = [continuation(tokenizer, row[m == 1], new) for row, m, new in zip(ids, mask, result.tokens)]
    per_token = (sum(result.step_s) / len(result.step_s) * 1000) if result.step_s else float("nan")
    return [t.tolist() for t in result.tokens], texts, \
        f"prompt {result.prefill_s * 1000:.1f} ms, {per_token:.2f} ms per new token"


def _with_transformers(folder, backend, options, prompts, max_new_tokens, settings, stream):
    import torch

    from torchship.runtimes.generate import continuation
    from torchship.runtimes.hf_generate import ContinuationStreamer, causal_lm

    model, tokenizer = causal_lm(folder, backend, options)
    seed = settings.pop("seed")
    if seed is not None:
        torch.manual_seed(seed)
    kwargs = {k: v for k, v in settings.items() if v is not None and k != "stop"}
    if settings["stop"]:
        kwargs.update(stop_strings=settings["stop"], tokenizer=tokenizer)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    if stream:  # the prompt as typed, then the new text as it comes, by the rule the finished text follows
        click.echo(prompts[0], nl=False)
        kwargs["streamer"] = ContinuationStreamer(tokenizer, enc["input_ids"][0][enc["attention_mask"][0] == 1],
                                                  lambda text: click.echo(text, nl=False))
    try:
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs)
    finally:
        model.predictor.deactivate()
    new = out[:, enc["input_ids"].shape[1]:]
    if stream:
        click.echo("")
    what = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("tokenizer", "streamer"))
    texts = [continuation(tokenizer, row[m == 1], t) for row, m, t in zip(enc["input_ids"], enc["attention_mask"], new)]
    return [t.tolist() for t in new], texts, \
        f"transformers generate: {what}"
