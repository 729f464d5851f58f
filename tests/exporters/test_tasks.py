"""Encoder tasks users deploy: sentence embeddings with their pooling in the graph, fill-mask; tasks read
from the checkpoint's head and refused when it lacks one; and the newer encoder families."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, run
from tiny import make_tokenizer, save_model_dir, save_sentence_transformers_dir

from torchship.artifact import Artifact
from torchship.errors import InputError, ModelLoadError
from torchship.exporters.export import ExportOptions, export
from torchship.optimizers import OptimizeOptions, optimize
from torchship.runtimes import create_predictor
from torchship.runtimes.text import TextModel

SENTENCES = ["the good movie", "a dog is running in the new world", "hello", "she was eating the food"]


def _predict(folder, texts, backend="ort"):
    art = Artifact.open(folder)
    with create_predictor(art, backend) as predictor:
        return TextModel.from_artifact(art, predictor).predict(texts)


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("cls", False), ("max", True)])
def test_sentence_embedding_puts_the_pooling_in_the_graph(tmp_path, pooling, normalize):
    from transformers import AutoModel

    src = save_sentence_transformers_dir(tmp_path / "st", pooling=pooling, normalize=normalize)
    out = tmp_path / "onnx"
    art = export(str(src), out, ExportOptions(task="sentence-embedding"))
    assert art.manifest.output_names == ("sentence_embedding",)
    assert art.manifest.io().outputs[0].axes == ("batch", 32)
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json"):  # still an ST folder
        assert (out / name).read_bytes() == (src / name).read_bytes()
    assert (out / "2_Normalize").is_dir() == normalize

    got = _predict(out, SENTENCES).embeddings  # padded batch: the rows differ in length
    tok = make_tokenizer(tmp_path / "t")
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = AutoModel.from_pretrained(src).eval()(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    expected = {"cls": hidden[:, 0], "mean": (hidden * mask).sum(1) / mask.sum(1),
                "max": torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).max(1).values}[pooling]
    if normalize:
        expected = torch.nn.functional.normalize(expected, dim=1)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_minilm_sentence_embedding_export_matches_sentence_transformers(minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from torchship.optimizers.accuracy import DEFAULT_TEXTS, read_texts

    out = tmp_path / "onnx"
    export(str(minilm_dir), out, ExportOptions(task="sentence-embedding"))
    optimize(out, OptimizeOptions(levels=(), candidates="preset"))  # the fused model; no per-shape timing
    texts = read_texts(DEFAULT_TEXTS, what="texts")
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_numpy=True)
    for backend in ("ort", "ort-optimized"):
        got = _predict(out, texts, backend).embeddings
        cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.min() >= 0.9999, backend


def test_sentence_embedding_refusals(tmp_path, model_dirs):
    out = tmp_path / "o"
    with pytest.raises(InputError, match="needs a sentence-transformers folder"):
        export(str(model_dirs("bert")), out, ExportOptions(task="sentence-embedding"))
    weighted = save_sentence_transformers_dir(tmp_path / "w", pooling_config={"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(ModelLoadError, match="weightedmean pooling; torchship pools one of cls, mean, max"):
        export(str(weighted), out, ExportOptions(task="sentence-embedding"))
    broken = save_sentence_transformers_dir(tmp_path / "b")
    (broken / "1_Pooling" / "config.json").unlink()
    proc = run("torchship", "export", "--model", str(broken), "--output", str(out), "--task", "sentence-embedding")
    assert_one_line_error(proc, "1_Pooling/config.json (a sentence-transformers setting) cannot be read")
    assert not out.exists()


def test_fill_mask_matches_transformers_pipeline(tmp_path):
    from transformers import AutoModelForMaskedLM, pipeline

    src = save_model_dir(tmp_path / "mlm", "bert", "fill-mask")
    out = tmp_path / "onnx"
    art = export(str(src), out, ExportOptions(task="fill-mask"))
    assert art.manifest.output_names == ("logits",) and art.manifest.task == "fill-mask"
    texts = ["the [MASK] is good", "a [MASK] was eating the [MASK] food"]
    ours = _predict(out, texts).masks
    pipe = pipeline("fill-mask", model=AutoModelForMaskedLM.from_pretrained(src), tokenizer=make_tokenizer(src))
    for mine, text in zip(ours, texts):
        theirs = pipe(text)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one mask: a flat list
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            assert [c["token"] for c in a] == [c["token"] for c in b]
            assert [c["sequence"] for c in a] == [c["sequence"] for c in b]
            np.testing.assert_allclose([c["score"] for c in a], [c["score"] for c in b], atol=1e-5)
    with pytest.raises(InputError, match=r"text 2 has no \[MASK\] token"):
        _predict(out, ["a [MASK] here", "no mask here"])


def test_the_task_follows_the_head_and_a_missing_head_is_refused(tmp_path, model_dirs):
    mlm = save_model_dir(tmp_path / "mlm", "bert", "fill-mask")
    art = export(str(mlm), tmp_path / "a")  # a pretraining head: what users deploy is the encoder
    assert art.manifest.task == "feature-extraction"
    art = export(str(model_dirs("bert", "text-classification")), tmp_path / "b")
    assert art.manifest.task == "text-classification"
    proc = run("torchship", "export", "--model", str(model_dirs("bert")), "--output", str(tmp_path / "c"),
               "--task", "fill-mask")
    assert_one_line_error(proc, "without the MaskedLM head that fill-mask needs")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("model_type, fused", [("mpnet", False), ("deberta-v2", False), ("modernbert", False),
                                               ("albert", None)])
def test_newer_families_report_what_onnx_runtime_fuses(exported, model_type, fused, tmp_path):
    folder = shutil.copytree(exported(model_type), tmp_path / model_type)
    art = optimize(folder, OptimizeOptions(levels=("all",)))
    for name in ("model", "ort-all", "optimized"):
        assert art.manifest.variants[name].validation.passed, name
    fusion = art.manifest.variants["optimized"].fusion
    assert fusion.expected_attention == 2
    if fused is False:  # said plainly: nothing to fuse, whatever the export path
        assert fusion.attention == 0 and "has no attention pattern" in fusion.warning
    else:  # ALBERT's two layers share one set of weights, fused once
        assert fusion.attention == 1 and "shares one layer's weights" in fusion.warning
    manifest = json.loads((folder / "torchship.json").read_text())
    assert manifest["model_config"]["num_layers"] == 2


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_token_classification_matches_transformers_pipeline(tmp_path, model_type):
    from transformers import AutoModelForTokenClassification, pipeline

    src = save_model_dir(tmp_path / "ner", model_type, "token-classification")
    out = tmp_path / "onnx"
    art = export(str(src), out)  # the task is read from the head
    assert art.manifest.task == "token-classification" and art.manifest.text["labels"][0] == "O"
    texts = ["hello world, the doggy is eating food at the cafe", "she was running fast", "xq zzz! a cat"]
    model = AutoModelForTokenClassification.from_pretrained(src).eval()
    with create_predictor(art, "ort") as predictor:
        text_model = TextModel.from_artifact(art, predictor)
        for strategy in ("none", "simple", "first", "average", "max"):
            pipe = pipeline("token-classification", model=model, tokenizer=make_tokenizer(src),
                            aggregation_strategy=strategy)
            got = text_model.predict(texts, aggregation=strategy).entities
            for mine, text in zip(got, texts):
                theirs = pipe(text)
                key = lambda e: (e.get("entity", e.get("entity_group")), e["start"], e["end"], e["word"])  # noqa: E731
                assert [key(e) for e in mine] == [key(e) for e in theirs], (strategy, text)
                np.testing.assert_allclose([e["score"] for e in mine], [float(e["score"]) for e in theirs],
                                           atol=1e-5)
        with pytest.raises(InputError, match="unknown aggregation"):
            text_model.predict(texts, aggregation="longest")


@pytest.mark.parametrize("task", ["sentence-embedding", "token-classification", "fill-mask", "question-answering"])
def test_every_task_goes_through_the_chain(tmp_path, task):
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan
    from torchship.optimizers.quantize import QuantizeOptions, quantize
    from torchship.serving.triton_repo import write_triton_repo

    src = save_sentence_transformers_dir(tmp_path / "src") if task == "sentence-embedding" else \
        save_model_dir(tmp_path / "src", "bert", task)
    out = tmp_path / "onnx"
    export(str(src), out, ExportOptions(task=task))
    art = optimize(out, OptimizeOptions(levels=("all",)))
    assert art.manifest.variants["optimized"].validation.passed
    art = quantize(out, QuantizeOptions(budget=0.5, per_channel=(True,), sources=("model",), op_types=("MatMul",),
                                        timing=TimingPlan(warmup=1, min_iterations=2, min_seconds=0.0)))
    metric = {"sentence-embedding": "sentence_cosine", "token-classification": "token_agreement",
              "fill-mask": "token_agreement", "question-answering": "answer_agreement"}[task]
    assert art.manifest.variants["int8"].validation.accuracy.metric == metric
    plan = TimingPlan(warmup=1, min_iterations=2, min_seconds=0.0, block=2)
    report = run_benchmark(out, BenchOptions(backends=("torch", "ort-optimized", "ort-int8"), threads=1, plan=plan))
    assert all(m.accuracy is None or m.accuracy.max_abs < 1e-3 for m in report.measurements
               if m.backend == "ort-optimized")
    assert report.budgets["ort-int8"]["metric"] == metric
    repo = write_triton_repo(out, tmp_path / "repo")
    assert (repo / "1" / "model.onnx").is_file()
    if task != "question-answering":
        assert _predict(out, ["a [MASK] is good" if task == "fill-mask" else "a cat is good"], "ort-int8").texts


def _brute_force(start_logits, end_logits, context_mask, max_len=15):
    """The best span by trying every one: softmax over the context's tokens, start <= end < start + max_len."""
    def probs(x):
        x = np.where(context_mask, x, -np.inf)
        e = np.exp(x - x[context_mask].max())
        return e / e.sum()

    ps, pe = probs(np.asarray(start_logits, dtype=np.float64)), probs(np.asarray(end_logits, dtype=np.float64))
    best = (0.0, 0, 0)
    for i in np.flatnonzero(context_mask):
        for j in range(i, min(i + max_len, len(pe))):
            if context_mask[j] and ps[i] * pe[j] > best[0]:
                best = (ps[i] * pe[j], i, j)
    return best


def test_question_answering_finds_the_best_span_over_windows(tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from torchship.runtimes.text import windows

    src = save_model_dir(tmp_path / "qa", "bert", "question-answering")
    out = tmp_path / "onnx"
    art = export(str(src), out)  # the task is read from the head
    assert art.manifest.task == "question-answering"
    assert art.manifest.output_names == ("start_logits", "end_logits")
    question = "who is eating the food?"
    short = "the dog is eating the food at the cafe"
    long = " ".join(["the cat was running in the world and a man was eating good food"] * 20)  # > 128 tokens
    art = Artifact.open(out)
    with create_predictor(art, "ort") as predictor:
        answers = TextModel.from_artifact(art, predictor).predict([short, long], question=question).answers
    model = AutoModelForQuestionAnswering.from_pretrained(src).eval()
    tok = make_tokenizer(src)
    for context, got in zip((short, long), answers):
        enc = windows(tok, question, context, art.manifest.text["max_length"])
        with torch.inference_mode():
            out_pt = model(**{k: torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")})
        best = None
        for w in range(len(enc["input_ids"])):
            mask = np.array([s == 1 for s in enc.sequence_ids(w)] + [False] * (enc["input_ids"].shape[1]
                                                                              - len(enc.sequence_ids(w))))
            score, i, j = _brute_force(out_pt.start_logits[w].numpy(), out_pt.end_logits[w].numpy(), mask)
            if best is None or score > best[0]:
                best = (score, w, i, j)
        score, w, i, j = best
        offsets = enc["offset_mapping"][w]
        assert (got["start"], got["end"]) == (int(offsets[i][0]), int(offsets[j][1]))
        assert got["answer"] == context[got["start"]:got["end"]] and got["answer"].strip()
        assert got["score"] == pytest.approx(score, rel=1e-4)
    assert len(windows(tok, question, long, art.manifest.text["max_length"])["input_ids"]) > 1

    for args, message in [([short], "needs a question"), (["   "], "text 1 is empty")]:
        with pytest.raises(InputError, match=message):
            _predict_qa(out, args, None if message == "needs a question" else question)
    with pytest.raises(InputError, match="the question is empty"):
        _predict_qa(out, [short], "  ")
    proc = run("torchship", "predict", str(out), short, "--question", question)
    assert proc.returncode == 0 and "[" in proc.stdout, proc.stderr


def _predict_qa(folder, contexts, question):
    art = Artifact.open(folder)
    with create_predictor(art, "ort") as predictor:
        return TextModel.from_artifact(art, predictor).predict(contexts, question=question)


@pytest.mark.parametrize("task, metric", [("question-answering", "answer_agreement"),
                                          ("token-classification", "token_agreement")])
def test_auto_judges_each_task_by_its_own_measure(tmp_path, task, metric):
    from torchship.auto import load_auto_config, run_auto

    src = save_model_dir(tmp_path / "src", "bert", task)
    cfg = tmp_path / "auto.yml"
    cfg.write_text("device: cpu\ninputs:\n  input_ids: {min: [1, 8], use: [1, 16], max: [2, 32]}\n"
                   "budget: 0.5\nthreads: 1\nmin_seconds: 0.1\nprecisions: [fp32, int8]\n")
    report = run_auto(str(src), load_auto_config(cfg), tmp_path / "auto")
    rows = {r.backend: r for r in report.rows}
    assert rows["ort-int8"].metric == metric and rows["ort-int8"].metric_mean >= 0.5
    assert report.chosen in rows and rows[report.chosen].usable


def test_a_fused_variant_whose_attention_did_not_fuse_is_not_picked(exported, tmp_path):
    folder = shutil.copytree(exported("mpnet"), tmp_path / "mpnet")
    art = optimize(folder, OptimizeOptions(levels=("all",)))
    assert not art.manifest.variants["optimized"].fusion.attention_fused
    assert art.best_variant() == "ort-all"
    bert = shutil.copytree(exported("bert"), tmp_path / "bert")
    assert optimize(bert, OptimizeOptions(levels=("all",))).best_variant() == "optimized"
