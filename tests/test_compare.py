import numpy as np
import pytest

from torchship.compare import ComparisonReport, compare_outputs, cosine, rowwise_cosine


def test_compare_collects_every_problem():
    ref = {"a": np.zeros((2, 3)), "b": np.ones((2, 2)), "c": np.ones(4)}
    got = {"a": np.full((2, 3), 0.5), "b": np.ones((3, 2)), "d": np.ones(1)}
    report = ComparisonReport(tuple(compare_outputs(ref, got, atol=0.1, case="x")))
    problems = {i.output: i.problem for i in report.failures}
    assert problems == {"a": "max abs 0.5 > atol 0.1", "b": "shape [3, 2], expected [2, 2]",
                        "c": "output missing", "d": "unexpected output"}
    assert not report.ok and report.max_abs == 0.5
    assert report.to_json()["passed"] is False


def test_compare_passes_within_tolerance_and_catches_nan():
    ref = {"a": np.array([1.0, 2.0, 3.0])}
    ok = compare_outputs(ref, {"a": ref["a"] + 1e-6}, atol=1e-5)
    assert ok[0].ok and ok[0].cosine > 0.999999
    bad = compare_outputs(ref, {"a": np.array([1.0, np.nan, 3.0])}, atol=1e-5)
    assert bad[0].problem == "output has NaN or inf"


def test_cosines():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert cosine(a, a) == pytest.approx(1.0)
    np.testing.assert_allclose(rowwise_cosine(a, np.array([[1.0, 1.0], [0.0, -1.0]])), [2 ** -0.5, -1.0])
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0


def test_compare_only_where_asked():
    ref = {"a": np.array([[1.0, 2.0], [3.0, 4.0]])}
    got = {"a": np.array([[1.0, 9.0], [3.0, 9.0]])}
    assert not compare_outputs(ref, got, atol=1e-6)[0].ok
    only_first = compare_outputs(ref, got, atol=1e-6, where={"a": np.array([True, False])})
    assert only_first[0].ok and only_first[0].expected_shape == (2, 2)
