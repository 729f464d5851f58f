"""Batch shards: one ONNX Runtime session run on equal parts of a batch at once, one thread per part.

ORT's intra-op parallelism splits each operator of a run across its threads and joins them at the end of every
operator; the small operators between the GEMMs (layer norms, softmax, reshapes) gain little from the split
and still pay for the join. A batch of independent rows can instead be cut into as many equal parts as there
are threads, each part run by a single-threaded session call on its own thread, side by side: no joins at
all; it measured faster than intra-op threads at batch 8 (docs/measurements.md#batch-shards); at batch 1
there is nothing to cut. The measured dispatch
(optimizers/dispatch.py) times it as the session tuning ``batch-shards`` and keeps it only where it wins.

ORT releases the GIL while a session runs, and one session may run from several threads at once, so the parts
share one session (one copy of the weights); the calling thread runs the first part itself.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from torchship.tensors import BATCH


def batch_axes(specs) -> dict[str, int] | None:
    """{tensor name: index of its batch axis} for every spec, or None when one has no batch axis (its rows
    cannot be cut)."""
    axes = {t.name: t.axes.index(BATCH) for t in specs if BATCH in t.axes}
    return axes if len(axes) == len(specs) else None


def shardable(io) -> bool:
    """Whether every input and output of ``io`` has a batch axis."""
    return batch_axes(io.inputs) is not None and batch_axes(io.outputs) is not None


def splits(batch: int, shards: int) -> bool:
    """Whether ``batch`` rows cut into ``shards`` equal parts (an uneven cut leaves a thread idle while the
    longest part runs, which costs more than the joins save)."""
    return shards > 1 and batch >= shards and batch % shards == 0


class BatchShards:
    """``run(output_names, feeds)`` like ``session.run``, with the batch cut into ``shards`` equal parts run at
    once (the session should have one intra-op thread). Only for batches where ``splits`` holds."""

    def __init__(self, session, shards: int, input_axes: dict[str, int], output_axes: dict[str, int]):
        if shards < 2:
            raise ValueError(f"batch shards need 2 threads or more, got {shards}")
        self.session, self.shards = session, shards
        self.input_axes, self.output_axes = input_axes, output_axes
        self.all_outputs = [o.name for o in session.get_outputs()]
        self._pool = ThreadPoolExecutor(max_workers=shards - 1, thread_name_prefix="torchship-shard")

    def batch_of(self, feeds) -> int:
        name = next(n for n in feeds if n in self.input_axes)
        return int(np.shape(feeds[name])[self.input_axes[name]])

    def run(self, output_names, feeds) -> list[np.ndarray]:
        names = list(output_names or self.all_outputs)
        batch = self.batch_of(feeds)
        if not splits(batch, self.shards):
            raise ValueError(f"a batch of {batch} does not cut into {self.shards} equal shards")
        size = batch // self.shards
        parts = [{n: _rows(a, self.input_axes.get(n), k * size, (k + 1) * size) for n, a in feeds.items()}
                 for k in range(self.shards)]
        futures = [self._pool.submit(self.session.run, names, part) for part in parts[1:]]
        try:
            first = self.session.run(names, parts[0])
        finally:
            wait(futures)  # no part is still running when this returns or raises
        results = [first, *(f.result() for f in futures)]
        return [np.concatenate([r[i] for r in results], axis=self.output_axes[n]) for i, n in enumerate(names)]

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _rows(array, axis: int | None, start: int, stop: int):
    """Rows ``start:stop`` of ``array`` along ``axis`` (None: the input has no batch axis, passed whole)."""
    if axis is None:
        return array
    index = [slice(None)] * np.ndim(array)
    index[axis] = slice(start, stop)
    return np.ascontiguousarray(np.asarray(array)[tuple(index)])
