"""Equinox's test conventions for every test of jaxreg.equinox: strict dtype
promotion and rank promotion "raise" (the modules must not rely on implicit
promotion or broadcasting)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _equinox_conventions():
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield
