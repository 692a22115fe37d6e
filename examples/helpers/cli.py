"""The one command line of the examples: every script builds its parser here."""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from examples.helpers.datasets import Data, load_mnist1d

__all__ = ["CACHE", "GUIDE_FIGURES", "ROOT", "TEMP_CACHE", "mnist1d_for", "parser"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Where the guide's figures and JSON results live (the default ``--out``).
GUIDE_FIGURES = str(ROOT / "docs" / "guide" / "figures")
#: The default MNIST-1D cache, relative to the working directory.
CACHE = "results/cache"
#: A cache outside the repository, for the scripts that never wrote into it.
TEMP_CACHE = str(pathlib.Path(tempfile.gettempdir()) / "jaxreg_examples")


def parser(
    doc: str | None,
    *,
    out: str = GUIDE_FIGURES,
    cache: str | None | bool = CACHE,
    seeds: int | None | bool = 3,
    epochs: int | None | bool = None,
    train_size: bool = False,
) -> argparse.ArgumentParser:
    """The shared options, with the script's defaults; the script adds its own.

    Every script gets ``--out`` (output folder) and ``--quick`` (a tiny smoke
    configuration); ``--cache`` (MNIST-1D ``.npz`` cache folder), ``--seeds`` and
    ``--epochs`` too unless their default is ``False`` (a script that has no such
    notion). A default of None lets the script decide (e.g. from ``--quick``).

    Args:
      doc: the script's docstring; its first line describes the command.
      out: default output folder.
      cache: default cache folder (None: the script decides), or False for no
        ``--cache`` option.
      seeds: default number of seeds, or False for no ``--seeds`` option.
      epochs: default number of epochs, or False for no ``--epochs`` option.
      train_size: add ``--train-size N`` (train on the first N examples only);
        see :func:`mnist1d_for`.

    Returns:
      An ``argparse.ArgumentParser``.
    """
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--out", default=out, help="output folder")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    if cache is not False:
        ap.add_argument("--cache", default=cache, help="MNIST-1D .npz cache folder")
    if seeds is not False:
        ap.add_argument("--seeds", type=int, default=seeds)
    if epochs is not False:
        ap.add_argument("--epochs", type=int, default=epochs)
    if train_size:
        ap.add_argument(
            "--train-size",
            type=int,
            default=None,
            help="use only the first N training examples (a regime that overfits)",
        )
    return ap


def mnist1d_for(args: argparse.Namespace) -> tuple[Data, str]:
    """MNIST-1D as the parsed options ask for it, and a tag for file names.

    ``--quick`` keeps 200 training and 100 test examples (2 minibatches of 100
    per epoch); ``--train-size N`` then keeps the first N training examples and
    makes the tag ``"_trainN"`` (else, or for a parser made without
    ``train_size=True``, the tag is ``""``).
    """
    data = load_mnist1d(args.cache)
    if args.quick:
        data = data.head(200, 100)
    n = getattr(args, "train_size", None)
    if n is None:
        return data, ""
    return data.head(n), f"_train{n}"
