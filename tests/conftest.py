"""Shared pytest fixtures for the jaxreg test suite."""

import jax
import pytest


@pytest.fixture(params=["threefry2x32", "rbg", "unsafe_rbg"])
def key_impl(request):
    """Each PRNG implementation jaxreg must accept."""
    return request.param


@pytest.fixture
def key():
    return jax.random.key(0)
