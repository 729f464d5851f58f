"""The generic families: text, image and audio encoders that no family spec names, exported through the public
``export``, validated against eager PyTorch (unseen shapes, a padded batch, the stored reference) and run through
the predictors (text through ``TextModel.predict``; image and audio on tensors, ORT against eager PyTorch).

Tiny random configs built here (hidden 32, 2 layers, 32x32 images, half-second audio). Left out, with the reason:
FNet (its forward takes no attention mask: refused), Nystromformer (fails at tiny size: the refusal test), Funnel
(torch.export fails), X-MOD (needs a default language set), SqueezeBERT (its grouped convolutions need other tiny sizes), Swin and wav2vec2-conformer
(the ONNX conversion fails), SEW (its frame count at another length differs from eager's: validation refuses it),
DeiT and LeViT (their classification class returns no logits field as the others do).
"""

from __future__ import annotations

import numpy as np
import pytest

from tiny import LABELS, make_tokenizer, vocabulary
from torchship.errors import ExportError
from torchship.exporters import encoders
from torchship.exporters.export import ExportOptions, export
from torchship.exporters.generic_media import AudioShape
from torchship.exporters.spec import family_of, register, saved_config, unregister
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.text import TextModel

T = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
VISION = dict(T, image_size=32, patch_size=8, num_channels=3)
IMAGE = dict(image_size=32, num_channels=3)
AUDIO = dict(T, conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=2, vocab_size=12, feat_extract_norm="layer")
# Half a second at 16 kHz, as in the spec's cases (1 s) but shorter: the tracing time does not depend on it.
AUDIO_CASES = dict(dummy_case=AudioShape(2, 8000),
                   validation_cases=(AudioShape(1, 6000), AudioShape(3, 10000, (10000, 5000, 3000))))

# model type -> (group, task, tiny config)
CASES = {
    "convbert": ("text", "text-classification", dict(T, embedding_size=32, head_ratio=2)),
    "deberta": ("text", "token-classification", dict(T, relative_attention=True, max_relative_positions=32,
                                                      pos_att_type=["p2c", "c2p"], type_vocab_size=0)),
    "mobilebert": ("text", "question-answering", dict(T, embedding_size=16, intra_bottleneck_size=16,
                                                      true_hidden_size=16, num_feedforward_networks=1)),
    "yoso": ("text", "fill-mask", dict(T)),
    "xlm": ("text", "feature-extraction", dict(emb_dim=32, n_layers=2, n_heads=4)),
    # a Llama-style decoder as a classifier: its rotary tables have batch 1 (tests the repair in graph_repairs.py)
    "arcee": ("text", "text-classification", dict(T, num_key_value_heads=2, head_dim=8)),
    "rembert": ("text", "feature-extraction", dict(T, input_embedding_size=16, output_embedding_size=16)),
    "vit": ("image", "image-classification", VISION),
    "beit": ("image", "image-feature-extraction", VISION),
    "dinov2": ("image", "image-feature-extraction", VISION),
    "convnext": ("image", "image-classification", dict(IMAGE, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
    "resnet": ("image", "image-feature-extraction", dict(IMAGE, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])),
    "wav2vec2": ("audio", "automatic-speech-recognition", AUDIO),
    "hubert": ("audio", "audio-classification", AUDIO),
}
CLASSES = {"feature-extraction": "AutoModel", "image-feature-extraction": "AutoModel",
           "text-classification": "AutoModelForSequenceClassification",
           "token-classification": "AutoModelForTokenClassification",
           "question-answering": "AutoModelForQuestionAnswering", "fill-mask": "AutoModelForMaskedLM",
           "image-classification": "AutoModelForImageClassification",
           "automatic-speech-recognition": "AutoModelForCTC", "audio-classification": "AutoModelForAudioClassification"}
TEXTS = ["the good [MASK] movie", "a dog is running in the world [MASK]"]


def save_tiny(folder, model_type: str, task: str, config: dict, *, text: bool):
    import torch
    import transformers
    from transformers import AutoConfig

    extra = dict(vocab_size=len(vocabulary()), max_position_embeddings=128, pad_token_id=0) if text else {}
    if task.endswith("classification"):
        extra.update(num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    cfg = AutoConfig.for_model(model_type, **config, **extra)
    torch.manual_seed(0)
    getattr(transformers, CLASSES[task]).from_config(cfg).eval().save_pretrained(folder)
    if text:
        make_tokenizer(folder).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type", list(CASES))
def test_a_model_without_a_family_spec_is_exported_validated_and_predicted(model_type, tmp_path):
    group, task, config = CASES[model_type]
    src = save_tiny(tmp_path / "src", model_type, task, config, text=group == "text")
    opts = ExportOptions(task=task, **(AUDIO_CASES if group == "audio" else {}))
    art = export(str(src), tmp_path / "onnx", opts)
    m = art.manifest
    assert m.family == f"generic-{group}" and m.task == task and m.variants["model"].validation.passed
    assert m.export["exporter"] == "dynamo" and (tmp_path / "onnx" / "reference.npz").is_file()
    spec = family_of(m)
    assert spec.family == m.family

    if group == "text":  # the text API on ORT; its feeds through ORT and eager PyTorch alike
        with create_predictor(art, "ort", RuntimeOptions(threads=1)) as predictor:
            model = TextModel.from_artifact(art, predictor)
            result = model.predict(TEXTS, question="what runs?" if task == "question-answering" else None)
            feeds = model.encode(TEXTS)
            ort_out = predictor.infer(feeds)
        assert len(result.to_json()) == len(TEXTS)
        with create_predictor(art, "torch", RuntimeOptions(threads=1)) as predictor:
            torch_out = predictor.infer(feeds)
        for name in m.output_names:
            np.testing.assert_allclose(ort_out[name], torch_out[name], atol=1e-4)
        return
    config_obj = saved_config(art)  # image and audio: tensors through the predictors, ORT against eager PyTorch
    case = spec.case_for({"batch": 2, **({"samples": 7000} if group == "audio" else {})}, config_obj)
    feeds = spec.sample_inputs(config_obj, m.io(), case, seed=3)
    outs = {}
    for backend in ("ort", "torch"):
        with create_predictor(art, backend, RuntimeOptions(threads=1)) as predictor:
            outs[backend] = predictor.infer(feeds)
    for name in m.output_names:
        assert outs["ort"][name].shape[0] == 2
        np.testing.assert_allclose(outs["ort"][name], outs["torch"][name], atol=1e-4)
    if task.endswith("classification"):
        assert m.text["labels"] == LABELS


@pytest.mark.parametrize("model_type", ["resnet", "wav2vec2"])
def test_bench_times_image_and_audio_folders(model_type, tmp_path):
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan

    group, task, config = CASES[model_type]
    src = save_tiny(tmp_path / "src", model_type, task, config, text=False)
    export(str(src), tmp_path / "onnx", ExportOptions(task=task, **(AUDIO_CASES if group == "audio" else {})))
    sizes = ({"batch": 2, "samples": 4000},) if group == "audio" else ({"batch": 2},)
    plan = TimingPlan(warmup=1, min_iterations=2, min_seconds=0.0, block=2)
    report = run_benchmark(tmp_path / "onnx", BenchOptions(backends=("torch", "ort"), sizes=sizes, threads=1, plan=plan))
    assert {m.phase for m in report.measurements} == {f"encode-{group}"}
    assert all(m.accuracy.max_abs < 1e-4 for m in report.measurements if m.backend == "ort")


def test_a_model_that_cannot_run_is_refused_in_one_line(tmp_path):
    """Nystromformer at tiny size fails in eager PyTorch at the validation shapes (and in torch.export, as measured
    by hand): refused with its class and the first line of the innermost error, nothing written."""
    src = save_tiny(tmp_path / "src", "nystromformer", "feature-extraction",
                    dict(T, num_landmarks=4, segment_means_seq_len=16), text=True)
    with pytest.raises(ExportError) as info:
        export(str(src), tmp_path / "onnx")
    message = str(info.value)
    assert "\n" not in message and "NystromformerModel" in message and "Traceback" not in message
    assert "step 1/3" not in message  # the innermost error, not torch.onnx's wrapper round it
    assert not (tmp_path / "onnx").exists()


def test_a_generic_export_of_bert_matches_the_bert_spec(model_dirs, tmp_path):
    """The generic text family forced on a tiny BERT (its spec taken out of the registry for the export) gives the
    BERT spec's outputs. The files differ: the spec exports with TorchScript from eager attention at opset 17 (what
    ONNX Runtime's BERT fuser fuses completely, measured), the generic family with the dynamo exporter from SDPA at
    opset 23; both record ort_model_type "bert" (the generic family takes ONNX Runtime's fuser for any model type in
    its MODEL_TYPES), so optimize fuses both, with the counts each graph allows."""
    folder = model_dirs("bert", "text-classification")
    bert = next(s for s in encoders.ENCODER_SPECS if s.family == "bert")
    unregister(bert)
    try:
        generic = export(str(folder), tmp_path / "generic", ExportOptions(task="text-classification"))
    finally:
        register(bert)
    spec = export(str(folder), tmp_path / "spec", ExportOptions(task="text-classification"))
    assert generic.manifest.family == "generic-text" and spec.manifest.family == "bert"
    assert generic.manifest.export["exporter"] == "dynamo" and spec.manifest.export["exporter"] == "torchscript"
    assert generic.manifest.ort_model_type == spec.manifest.ort_model_type == "bert"
    assert generic.manifest.input_names == spec.manifest.input_names
    texts = ["the good movie", "a dog is running in the world", "bad"]
    probs = []
    for art in (generic, spec):
        with create_predictor(art, "ort", RuntimeOptions(threads=1)) as predictor:
            probs.append([r["score"] for r in TextModel.from_artifact(art, predictor).predict(texts).to_json()])
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)
