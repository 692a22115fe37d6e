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


# The tests that take longest (tens of seconds each: subprocess workers, example
# runs, the dieharder battery), by file name. They are scheduled first, so that
# with `pytest -n 2` the two workers end on short tests instead of one worker
# waiting for the other's last long test.
_LONG_FIRST = (
    "test_sharding.py",
    "test_examples_",
    "test_multiprocess.py",
    "test_dieharder.py",
    "test_attention.py",
)


def pytest_collection_modifyitems(config, items):
    """Run the long test files first (a stable sort: order within is kept)."""

    def short(item):  # False (sorted first) for the long files
        return not item.path.name.startswith(_LONG_FIRST)

    items.sort(key=short)
