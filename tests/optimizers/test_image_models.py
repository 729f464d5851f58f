"""Image models through optimize, quantize and bench: a tiny ViT (random weights, 32x32 images, built in code)
exported for real, fused by ONNX Runtime's vit optimizer, its dispatch measured over image batches, int8 judged on
held-out generated images (kept, or refused by its budget with the measure recorded) and batch-independent."""

from __future__ import annotations

import numpy as np
import pytest

from torchship.artifact import Artifact
from torchship.errors import BudgetError
from torchship.exporters.export import ExportOptions, export
from torchship.optimizers import image_samples
from torchship.optimizers.dispatch import DispatchPlan
from torchship.optimizers.optimize import OptimizeOptions, optimize
from torchship.optimizers.quantize import QuantizeOptions, quantize

from exporters.test_generic_encoders import VISION, save_tiny

QUICK = DispatchPlan(min_rounds=2, max_rounds=2, seconds=0.0, final_rounds=2, final_max_rounds=2, threads=2)
# one dynamic candidate: weight MatMuls in int8, activations per row (what keeps an image's answer its own)
ONE = dict(methods=("dynamic",), sources=("model",), op_types=("MatMul",), per_channel=(True,), threads=1,
           fallback="off")


def _processor(folder):
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A tiny ViT classifier, exported (its processor copied beside it) and optimized with the measured dispatch."""
    root = tmp_path_factory.mktemp("vit")
    src = save_tiny(root / "src", "vit", "image-classification", VISION, text=False)
    _processor(src)
    export(str(src), root / "onnx", ExportOptions(task="image-classification"))
    optimize(root / "onnx", OptimizeOptions(levels=("disabled", "all"), dispatch=QUICK, approximate=False))
    return root / "onnx"


def test_optimize_fuses_vit_and_measures_the_image_batches(vit):
    m = Artifact.open(vit).manifest
    assert m.ort_model_type == "vit"
    fused = m.variants["optimized"].fusion
    assert fused.attention == fused.expected_attention == 2  # counted in the written graph, one per layer
    table = m.dispatch
    assert [(s.batch, s.sequence) for s in table.shapes] == [(1, 0), (8, 0), (32, 0)]
    assert set(table.candidates) >= {"model", "optimized"}
    for batch in (1, 5, 8, 9, 100):  # every batch falls in one range, read with sequence 0 (images have none)
        assert table.choice(batch, 0)[0] in table.candidates

    from torchship.runtimes import RuntimeOptions, create_predictor

    art = Artifact.open(vit)
    pixels = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with create_predictor(art, "ort-measured", RuntimeOptions(threads=1)) as measured:  # the table's pick per call
        got = measured.infer({"pixel_values": pixels})["logits"]
        assert measured.variant_for({"pixel_values": pixels}) == table.choice(3, 0)[0]
    with create_predictor(art, "ort", RuntimeOptions(threads=1)) as plain:
        np.testing.assert_allclose(got, plain.infer({"pixel_values": pixels})["logits"], atol=1e-4)


def test_int8_on_images_is_kept_within_budget_and_batch_independent(vit, tmp_path):
    import shutil

    from torchship._ort import make_session

    folder = shutil.copytree(vit, tmp_path / "q")
    # a random-weight classifier has near-ties that int8 may flip (one image in 48 here): a budget of 0.9
    art = quantize(folder, QuantizeOptions(**ONE, budget=0.9))
    v = art.manifest.variants["int8"]
    acc = v.validation.accuracy
    assert acc.metric == "label_agreement" and acc.mean >= 0.9 and acc.budget == 0.9
    assert acc.samples == image_samples.PROBE_IMAGES and acc.batch_independent
    # an image's answer alone equals its answer beside other images (one of them full-range noise)
    pixels = image_samples.probe_pixels(folder, art.manifest)
    together = np.concatenate([pixels[:4], image_samples.loud_image(pixels)])
    session = make_session(folder / v.file, threads=1)
    both = session.run(None, {"pixel_values": together})[0]
    for i in range(4):
        alone = session.run(None, {"pixel_values": pixels[i:i + 1]})[0]
        np.testing.assert_allclose(alone[0], both[i], rtol=0, atol=1e-5)


def test_int8_over_its_budget_is_refused_with_the_measure_recorded(vit, tmp_path):
    """A budget of 1.0 on a feature extractor's embedding cosine: no int8 model reaches it, so nothing is kept and
    the manifest says how close each candidate came; static int8 calibrated on generated images is judged too."""
    src = save_tiny(tmp_path / "src", "vit", "image-feature-extraction", VISION, text=False)
    _processor(src)
    art = export(str(src), tmp_path / "onnx", ExportOptions(task="image-feature-extraction"))
    with pytest.raises(BudgetError, match="embedding_cosine mean >= 1"):
        quantize(art.folder, QuantizeOptions(**{**ONE, "methods": ("dynamic", "static"),
                                                "quant_formats": ("qdq",), "activation_types": ("uint8",)},
                                             budget=1.0))
    m = Artifact.open(art.folder).manifest
    assert "int8" in m.skipped and "int8" not in m.variants
    tried = {c.method: c.accuracy for c in m.quantization.candidates}
    for method in ("dynamic", "static"):
        acc = tried[method]
        assert acc.metric == "embedding_cosine" and 0.9 < acc.mean < 1.0 and acc.batch_independent


def test_generated_images_are_seeded_and_held_out():
    a = image_samples.generated_images(6, seed=image_samples.PROBE_SEED, size=(24, 32))
    b = image_samples.generated_images(6, seed=image_samples.PROBE_SEED, size=(24, 32))
    c = image_samples.generated_images(6, seed=image_samples.CALIBRATION_SEED, size=(24, 32))
    assert all(x.shape == (24, 32, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(x.std() > 1 for x in a)  # pictures, not flat fields


def test_calibration_adds_a_folder_of_images_read_by_the_processor(vit, tmp_path):
    from PIL import Image

    from torchship.errors import InputError
    from torchship.processing.image import ImageSettings, open_image, preprocess

    m = Artifact.open(vit).manifest
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, array in enumerate(image_samples.generated_images(3, seed=9, size=(60, 80))):
        Image.fromarray(array).save(photos / f"p{i}.{'png' if i % 2 else 'jpg'}")
    (photos / "notes.txt").write_text("not an image, and not an image suffix: left alone")
    pixels = image_samples.calibration_pixels(vit, m, str(photos))
    assert pixels.shape == (image_samples.CALIBRATION_IMAGES + 3, 3, 32, 32) and pixels.dtype == np.float32
    settings = ImageSettings.from_config(image_samples.processor_config(vit))
    expected = preprocess([open_image(p)[0] for p in sorted(photos.glob("p*"))], settings)
    np.testing.assert_array_equal(pixels[-3:], expected)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="calibration image broken.png") as info:
        image_samples.calibration_pixels(vit, m, str(photos))
    assert "\n" not in str(info.value)


def test_bench_times_eager_pytorch_the_variants_and_the_preprocessing_on_its_own_row(vit):
    from torchship.benchmarks.image_preprocess import PHASE, PREPROCESS
    from torchship.benchmarks.report import markdown_table
    from torchship.benchmarks.run import BenchOptions, run_benchmark
    from torchship.benchmarks.timing import TimingPlan

    plan = TimingPlan(warmup=1, min_iterations=2, min_seconds=0.0, block=2)
    report = run_benchmark(vit, BenchOptions(backends=("torch", "ort", "ort-optimized"), sizes=({"batch": 2},),
                                             threads=1, plan=plan))
    rows = {m.backend: m for m in report.measurements}
    assert set(rows) == {"torch", "ort", "ort-optimized", PREPROCESS}
    prep = rows[PREPROCESS]
    assert prep.phase == PHASE and prep.batch == 2 and "640x480" in prep.shape and prep.p50_ms > 0
    assert prep.accuracy is None and report.speedup(prep) is None  # not a model: no speed-up against eager
    assert report.speedup(rows["ort"]) is not None and rows["ort"].accuracy.max_abs < 1e-4
    assert "resize to 32x32" in report.settings["preprocess"]
    assert "| preprocess | 2 |" in markdown_table(report)
