"""int8 answers that do not depend on the rest of the batch (issue 27, item 1), on real exports, ORT's real
quantizer and real ORT sessions: dynamic int8 scales activations per row, and the search drops a candidate whose
answer for a text still changes with what else is in its batch."""

import shutil

import numpy as np
import onnx
import pytest

from torchship.benchmarks.timing import TimingPlan
from torchship.optimizers.accuracy import BATCH_FLOOR, LONG_WORDS
from torchship.optimizers.int8_rows import is_per_row
from torchship.optimizers.quantize import FILE, QuantizeOptions, quantize
from torchship.runtimes import RuntimeOptions, create_predictor
from torchship.runtimes.text import TextModel

QUICK = TimingPlan(warmup=1, min_iterations=3, min_seconds=0.0, block=3)
TEXTS = ["A man is eating food.", "the dog is running", "hello world", "it is"]
LONG = " ".join(["the weather was fine and everyone walked along the river to the old mill"] * 20)
assert len(LONG.split()) >= LONG_WORDS - 20


@pytest.fixture
def bert_copy(exported, tmp_path):
    return shutil.copytree(exported("bert", optimized=True), tmp_path / "bert")


def _alone_and_beside(art, backend="ort-int8") -> np.ndarray:
    """Per text: cosine between its embedding alone and inside one padded batch beside a ~200-word text."""
    with create_predictor(art, backend, RuntimeOptions(threads=1)) as p:
        model = TextModel.from_artifact(art, p)
        alone = np.concatenate([model.predict([t]).embeddings for t in TEXTS])
        beside = model.predict([*TEXTS, LONG]).embeddings[:len(TEXTS)]
    return (alone * beside).sum(1) / (np.linalg.norm(alone, axis=1) * np.linalg.norm(beside, axis=1))


def test_kept_dynamic_int8_gives_a_text_the_same_answer_whatever_its_batch(bert_copy):
    art = quantize(bert_copy, QuantizeOptions(sources=("model",), per_channel=(True,), op_types=("MatMul",),
                                              budget=0.5, fallback="off", timing=QUICK))
    v = art.manifest.variants["int8"]
    assert v.options.activations.startswith("per-row")
    assert is_per_row(bert_copy / FILE)
    ops = {n.op_type for n in onnx.load(str(bert_copy / FILE)).graph.node}
    assert "MatMulIntegerToFloat" in ops and "DynamicQuantizeLinear" not in ops
    cos = _alone_and_beside(art)
    assert cos.min() >= BATCH_FLOOR, cos
    # the probe measured the same and recorded it
    q = art.manifest.quantization.to_json()
    chosen = next(c for c in q["candidates"] if c["name"] == q["chosen"])
    assert chosen["accuracy"]["batch_cosine_min"] >= BATCH_FLOOR and chosen["accuracy"]["batch_independent"]
    assert _alone_and_beside(art, "ort").min() >= BATCH_FLOOR  # fp32 passes its own check, so the floor holds


def test_minilm_int8_answers_do_not_depend_on_the_batch_and_the_search_drops_those_that_do(minilm_export,
                                                                                          tmp_path):
    """The real MiniLM, where per-tensor int8 moved a text's embedding to 0.98 cosine when a long text shared its
    batch. Per-row int8 is kept; the fused graph with QAttention (one activation scale per tensor) stays
    batch-dependent, and the probe's batch check drops it with the reason although its accuracy is in budget."""
    folder = shutil.copytree(minilm_export, tmp_path / "minilm")
    art = quantize(folder, QuantizeOptions(sources=("optimized",), per_channel=(True,), budget=0.98,
                                           fallback="always", timing=QUICK))
    q = art.manifest.quantization.to_json()
    by_name = {c["name"]: c for c in q["candidates"]}
    dropped = by_name["dynamic/optimized/default-ops/per-channel"]
    assert dropped["accuracy"]["mean"] >= 0.98 and not dropped["passed"]
    assert dropped["accuracy"]["batch_cosine_min"] < BATCH_FLOOR
    assert dropped["verdict"].startswith("dropped: it") and "depends on the rest of the batch" in dropped["verdict"]
    assert not q["fallback"]  # fp32 MatMuls cannot mend a per-tensor QAttention: nothing to rescue
    assert q["chosen"] == "dynamic/optimized/MatMul/per-channel"
    cos = _alone_and_beside(art)
    assert cos.min() >= BATCH_FLOOR, cos
