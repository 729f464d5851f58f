import numpy as np
import pytest

from torchship.artifact import Artifact
from torchship.errors import InputError
from torchship.exporters.inputs import TextShape, make_text_inputs
from torchship.runtimes import BACKENDS, RuntimeOptions, create_predictor, parse_backends
from torchship.runtimes.text import TextModel, pool


def test_backends_agree_through_one_interface(exported):
    art = Artifact.open(exported("bert", optimized=True))
    m = art.manifest
    feeds = make_text_inputs(m.input_names, TextShape(3, 20, (20, 9, 2)), vocab_size=100, seed=3)
    outs = {}
    for backend in ("torch", "torchscript", "ort", "ort-optimized", "ort-basic", "ort-disabled"):
        with create_predictor(art, backend, RuntimeOptions(threads=1)) as p:
            assert p.input_names == m.input_names and p.output_names == m.output_names
            outs[backend] = p.infer(feeds)
            assert p.last_latency_s > 0
        assert not p.active
    for backend, out in outs.items():
        for name in m.output_names:
            np.testing.assert_allclose(out[name], outs["torch"][name], atol=1e-4, err_msg=backend)


def test_predictor_checks_inputs(exported):
    art = Artifact.open(exported("bert"))
    p = create_predictor(art, "ort")
    good = make_text_inputs(art.manifest.input_names, TextShape(1, 4), vocab_size=50)
    with pytest.raises(InputError, match="'token_type_ids' is missing"):
        p.infer({k: v for k, v in good.items() if k != "token_type_ids"})
    with pytest.raises(InputError, match="expected \\['batch', 'sequence'\\]"):
        p.infer({k: v[0] for k, v in good.items()})
    with pytest.raises(InputError, match="expected integers"):
        p.infer({k: v.astype(np.float32) for k, v in good.items()})
    out = p.infer({k: v.astype(np.int32) for k, v in good.items()})  # ints of any width are fine
    assert out["last_hidden_state"].shape == (1, 4, 32)
    as_lists = p.infer({k: v.tolist() for k, v in good.items()})  # nested lists too, as the declared dtype
    np.testing.assert_array_equal(as_lists["last_hidden_state"], out["last_hidden_state"])
    assert all(p._checked(good)[k] is v for k, v in good.items())  # well-formed feeds pass as they are, uncopied
    with pytest.raises(InputError, match="'input_ids' is empty along 'batch'"):
        p.infer({k: v[:0] for k, v in good.items()})


def test_parse_backends():
    assert parse_backends("torch, ort") == ("torch", "ort")
    with pytest.raises(InputError, match="unknown backend 'tensorflow'"):
        parse_backends("torch,tensorflow")
    with pytest.raises(InputError, match="no backends"):
        parse_backends(" , ")
    assert "ort-optimized" in BACKENDS


def test_missing_variant_asks_for_optimize(exported, tmp_path):
    from torchship.exporters.export import export

    art = export(str(Artifact.open(exported("distilbert")).manifest.source["resolved"]), tmp_path / "plain")
    with pytest.raises(InputError, match="torchship optimize"):
        create_predictor(art, "ort-optimized")


def test_text_layer_embeddings_use_the_attention_mask(exported):
    art = Artifact.open(exported("bert"))
    tm = TextModel.from_artifact(art, create_predictor(art, "ort"))
    single = tm.predict("the cat is eating food").embeddings
    batch = tm.predict(["the cat is eating food", "hello"]).embeddings
    assert single.shape == (1, 32) and batch.shape == (2, 32)
    # Padding the short text must not change the long one's embedding.
    np.testing.assert_allclose(batch[0], single[0], atol=1e-5)
    np.testing.assert_allclose(tm.predict("hello").embeddings[0], batch[1], atol=1e-5)


def test_text_layer_roberta_gets_no_token_type_ids(exported):
    art = Artifact.open(exported("roberta"))
    tm = TextModel.from_artifact(art, create_predictor(art, "ort"))
    assert "token_type_ids" not in tm.encode(["a test"])
    assert tm.predict(["a test", "good movie"]).embeddings.shape == (2, 32)


def test_classifier_gives_labels_and_scores(exported):
    art = Artifact.open(exported("electra", "text-classification"))
    tm = TextModel.from_artifact(art, create_predictor(art, "ort"))
    res = tm.predict(["good movie", "awful film", "hello"])
    assert res.logits.shape == (3, 3)
    np.testing.assert_allclose(res.scores.sum(axis=1), 1.0, rtol=1e-6)
    assert set(res.labels) <= {"negative", "neutral", "positive"}
    torch_res = TextModel.from_artifact(art, create_predictor(art, "torch")).predict(["good movie", "awful film", "hello"])
    assert torch_res.labels == res.labels
    np.testing.assert_allclose(torch_res.logits, res.logits, atol=1e-4)


def test_pooling_modes():
    h = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(pool(h, mask, "mean")[0], h[0, :2].mean(axis=0))
    np.testing.assert_allclose(pool(h, mask, "cls"), h[:, 0])
    np.testing.assert_allclose(pool(h, mask, "max")[0], h[0, 1])


def test_predict_rejects_empty_input(exported):
    art = Artifact.open(exported("bert"))
    tm = TextModel.from_artifact(art, create_predictor(art, "ort"))
    for bad in ([], [1, 2]):
        with pytest.raises(InputError, match="string"):
            tm.predict(bad)


def test_cuda_device_without_cuda_names_the_extra(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has ORT's CUDA provider; the error path is for machines without it")
    from torchship.errors import BackendUnavailable

    art = Artifact.open(exported("bert"))
    with pytest.raises(BackendUnavailable, match=r"pip install 'torchship\[gpu\]'"):
        create_predictor(art, "ort", RuntimeOptions(device="cuda")).activate()
    with create_predictor(art, "ort", RuntimeOptions(device="auto")) as p:  # falls back to the CPU
        assert p.infer(make_text_inputs(art.manifest.input_names, TextShape(1, 5), vocab_size=50))


@pytest.mark.slow
def test_torch_compile_backend_matches_eager(exported):
    art = Artifact.open(exported("bert"))
    feeds = make_text_inputs(art.manifest.input_names, TextShape(3, 20, (20, 9, 2)), vocab_size=100, seed=3)
    with create_predictor(art, "torch", RuntimeOptions(threads=2)) as p:
        ref = p.infer(feeds)
    with create_predictor(art, "torch-compile", RuntimeOptions(threads=2)) as p:
        assert p.backend == "pytorch-compile"
        got = p.infer(feeds)
    np.testing.assert_allclose(got["last_hidden_state"], ref["last_hidden_state"], atol=1e-5)
