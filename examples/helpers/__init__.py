"""Helpers shared by the example scripts (not part of jaxreg).

* :mod:`~examples.helpers.datasets`: MNIST-1D, generated locally and cached.
* :mod:`~examples.helpers.models`: a plain-JAX MLP with regularizer hooks.
* :mod:`~examples.helpers.training`: the vmapped training loop and its history.
* :mod:`~examples.helpers.reporting`: tables, learning curves, figures.
* :mod:`~examples.helpers.cli`: the one command-line parser.

Conventions: seeds are a leading axis of size ``S`` on every per-seed array;
accuracies are fractions in ``[0, 1]``; epochs are counted from 1 in histories
(entry ``i`` is after epoch ``i + 1``).
"""
