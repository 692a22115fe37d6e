"""The data sets of the examples: MNIST-1D, generated locally and cached."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Data", "load_mnist1d"]


@dataclass(frozen=True)
class Data:
    """A classification data set as float32 / int32 numpy arrays.

    Attributes:
      x_train, y_train: training inputs ``(N, D)`` and integer labels ``(N,)``.
      x_test, y_test: test inputs and labels.
      num_classes: number of classes.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x_train, y_train, x_test, y_test)``."""
        return self.x_train, self.y_train, self.x_test, self.y_test

    def head(self, num_train: int | None = None, num_test: int | None = None) -> Data:
        """The first ``num_train`` training and ``num_test`` test examples (None:
        all of them)."""
        return Data(
            self.x_train[:num_train],
            self.y_train[:num_train],
            self.x_test[:num_test],
            self.y_test[:num_test],
            self.num_classes,
        )

    def split_validation(self, num_val: int) -> tuple[Data, Data]:
        """Split the last ``num_val`` training examples off as a validation set.

        Returns ``(fit, val)`` where ``fit`` trains on the first ``N - num_val``
        examples (test set unchanged) and ``val`` has the held-out examples in
        its ``x_test``/``y_test`` slots.
        """
        n = len(self.y_train) - num_val
        fit = Data(
            self.x_train[:n],
            self.y_train[:n],
            self.x_test,
            self.y_test,
            self.num_classes,
        )
        val = Data(
            self.x_train[:n],
            self.y_train[:n],
            self.x_train[n:],
            self.y_train[n:],
            self.num_classes,
        )
        return fit, val


def load_mnist1d(
    cache_dir: str | os.PathLike | None = None,
    *,
    num_samples: int = 5000,
    seed: int = 42,
) -> Data:
    """MNIST-1D (Greydanus 2020), generated locally with the package defaults.

    ``num_samples=5000`` with the default 80/20 split gives 4000 training and 1000
    test examples, the setting in which the paper reports about 68% test accuracy
    for an MLP. Generation takes a few seconds; if ``cache_dir`` is given the
    arrays are cached there as ``mnist1d_<num_samples>_<seed>.npz`` (nothing is
    written anywhere else).

    Args:
      cache_dir: folder for the ``.npz`` cache, or None for no cache.
      num_samples: total number of sequences (train + test).
      seed: the generator's seed (the package default is 42).

    Returns:
      A :class:`Data` with inputs ``(N, 40)`` float32 (zero mean, unit variance
      over the whole set, as the package normalizes) and int32 labels.

    References:
      Greydanus. "Scaling Down Deep Learning." 2020.
      https://arxiv.org/abs/2011.14439
    """
    path = None
    if cache_dir is not None:
        path = pathlib.Path(cache_dir) / f"mnist1d_{num_samples}_{seed}.npz"
        if path.exists():
            z = np.load(path)
            return Data(z["x"], z["y"], z["x_test"], z["y_test"])
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    state = np.random.get_state()  # make_dataset reseeds numpy's global RNG
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    arrays = {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int32),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int32),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    return Data(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"])
