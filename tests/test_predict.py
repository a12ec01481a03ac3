"""network.predict's chunks: every row predicted once, in order, whatever the chunk size,
against a float64 forward written out here."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.core.network import predict


def _problem(rows: int) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(3)
    sizes = [12, 9, 7, 5]
    params = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        params += [rng.normal(0, 0.7, (a, b)), rng.normal(0, 0.2, b)]
    return params, rng.normal(0, 1, (rows, 12))


def _expected(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """ReLU, tanh, then the logits' argmax (softmax keeps the order): float64, by hand."""
    h = np.maximum(x @ params[0] + params[1], 0.0)
    h = np.tanh(h @ params[2] + params[3])
    return np.argmax(h @ params[4] + params[5], axis=1)


@pytest.mark.parametrize("rows, chunk", [(2500, None), (20, 7), (21, 7), (5, 8)])
def test_predict_covers_every_row_in_order(rows: int, chunk: int | None) -> None:
    params, x = _problem(rows)
    seen: list[tuple[int, int]] = []
    kwargs = {} if chunk is None else {"chunk": chunk}
    got = predict(params, ["relu", "tanh", "softmax"], x,
                  on_chunk=lambda done, total: seen.append((done, total)), **kwargs)
    np.testing.assert_array_equal(got, _expected(params, x))
    size = chunk or 1024  # the default: several chunks of 2,500 rows, the last one partial
    assert seen == [(min(hi, rows), rows) for hi in range(size, rows + size, size)]
