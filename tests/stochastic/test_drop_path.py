"""``jaxreg.drop_path``: whole rows or the whole batch dropped, bad arguments.

Statistical bounds: see ``_stochastic.py`` (4 sigma, stated once).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import assert_binomial
from _stochastic import X2, data, key_at

from jaxreg import (
    drop_path,
    keep_probability,
)


def test_drop_path_row_drops_whole_rows():
    rate = 0.3
    x = data((100_000, 3, 2), 31)
    y = drop_path(key_at(31), x, rate)
    kept = (np.asarray(y) != 0).reshape(len(x), -1)
    assert (kept == kept[:, :1]).all(), "a row is partly dropped"
    assert_binomial(int(kept[:, 0].sum()), len(x), 1 - rate)
    p = keep_probability(rate)
    rows = kept[:, 0]
    np.testing.assert_allclose(np.asarray(y)[rows], np.asarray(x)[rows] / p, rtol=1e-6)


def test_drop_path_batch_drops_the_whole_batch():
    rate, num_keys = 0.3, 4000
    x = data((4, 5), 32)
    keys = jax.random.split(key_at(32), num_keys)
    ys = jax.vmap(lambda k: drop_path(k, x, rate, mode="batch"))(keys)
    kept = (np.asarray(ys) != 0).reshape(num_keys, -1)
    assert (kept == kept[:, :1]).all(), "the batch is partly dropped"
    assert_binomial(int(kept[:, 0].sum()), num_keys, 1 - rate)


def test_drop_path_inference_and_residual_use():
    x = data((8, 4), 33)
    np.testing.assert_array_equal(drop_path(None, x, 0.5, deterministic=True), x)
    # scalar input is fine for mode="batch"
    y = drop_path(key_at(33), jnp.float32(2.0), 0.5, mode="batch")
    assert y.shape == () and float(y) in (0.0, 4.0)


@pytest.mark.parametrize("mode", ["col", "Row", None, 1])
def test_drop_path_bad_mode(mode):
    with pytest.raises(ValueError, match=rf"`mode` must be 'row' or 'batch'.*{mode!r}"):
        drop_path(key_at(57), X2, 0.5, mode=mode)


def test_drop_path_row_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"`x` must have a batch axis.*mode='batch'"):
        drop_path(key_at(58), jnp.float32(1.0), 0.5)
