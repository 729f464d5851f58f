"""Batch shards: one real ORT session run on equal parts of a batch at once, one thread each, giving what the
whole batch gives (torchship/_shards.py); the predictor runs them for the session tuning ``batch-shards`` and
runs a batch that does not divide evenly whole, on every thread."""

import numpy as np
import pytest

from torchship._ort import make_session
from torchship._shards import BatchShards, batch_axes, shardable, splits
from torchship.artifact import Artifact
from torchship.runtimes.ort import OrtPredictor


def _feeds(batch: int, sequence: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 90, size=(batch, sequence), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, sequence // 2:] = 0  # one padded row: each shard keeps its own rows' masks
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_which_batches_cut_into_equal_shards():
    assert splits(8, 2) and splits(4, 4) and splits(6, 3)
    assert not splits(1, 2) and not splits(3, 2) and not splits(2, 4) and not splits(8, 1)


def test_shards_give_what_the_whole_batch_gives(exported):
    art = Artifact.open(exported("bert"))
    io = art.manifest.io()
    assert shardable(io) and batch_axes(io.inputs) == {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}
    whole = make_session(art.path_of("model"), threads=2)
    one_thread = make_session(art.path_of("model"), threads=2, tuning="batch-shards")
    assert one_thread.get_session_options().intra_op_num_threads == 1  # the shards are the parallelism
    shards = BatchShards(one_thread, 2, batch_axes(io.inputs), batch_axes(io.outputs))
    try:
        feeds = _feeds(6, 11)
        expected = whole.run(None, feeds)
        got = shards.run(None, feeds)
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="a batch of 3 does not cut into 2 equal shards"):
            shards.run(None, _feeds(3, 11))
    finally:
        shards.close()


def test_the_predictor_runs_shards_and_an_uneven_batch_whole(exported):
    art = Artifact.open(exported("bert"))
    io = art.manifest.io()
    with OrtPredictor(art.path_of("model"), io, threads=2) as plain, \
            OrtPredictor(art.path_of("model"), io, threads=2, tuning="batch-shards") as sharded:
        for batch in (4, 3):  # 4: two shards of 2 rows; 3: the whole batch, on a 2-thread session opened for it
            feeds = _feeds(batch, 9, seed=batch)
            got, expected = sharded.infer(feeds), plain.infer(feeds)
            for name in io.output_names:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
            opened = sharded._whole is not None
            assert opened == (batch == 3)
        assert sharded._whole.get_session_options().intra_op_num_threads == 2
    assert sharded._shards is None and sharded._whole is None  # closed with the predictor
    with OrtPredictor(art.path_of("model"), io, threads=1, tuning="batch-shards") as single:
        # One thread: nothing to cut, one plain session.
        assert single._shards is None and single._session.get_session_options().intra_op_num_threads == 1
        assert single.infer(_feeds(2, 5))["last_hidden_state"].shape[0] == 2
