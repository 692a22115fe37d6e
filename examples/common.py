"""Shared helpers for the jaxreg example scripts (the study and the guide).

Everything an example needs besides the regularizer under study:

* :func:`load_mnist1d`: the MNIST-1D data set, generated locally by the
  ``mnist1d`` package (4000 train / 1000 test sequences of length 40, 10 classes)
  and cached as ``.npz`` inside the caller's output folder only.
* :func:`init_mlp` / :func:`mlp_apply`: a plain-JAX MLP (a list of ``{"w", "b"}``
  dicts) with hooks to insert a regularizer on the input and after every hidden
  activation, and an option to return the hidden activations.
* :func:`train`: a jitted minibatch training loop with optax, vmapped over seeds
  (one compiled program trains all seeds at once), with a tqdm progress bar and
  optional per-epoch early stopping. Returns a :class:`History`.
* :func:`summarize`, :func:`markdown_table`, :func:`mean_spread`: results tables.
* :func:`plot_curves`, :func:`savefig`: matplotlib figures (Agg backend).
* :func:`accuracy`, :func:`cross_entropy`, :func:`output_dir`, :func:`seed_keys`:
  small utilities.

The API is stable: the other example scripts import it. Conventions: seeds are a
leading axis of size ``S`` on every per-seed array; accuracies are fractions in
``[0, 1]``; epochs are counted from 1 in histories (entry ``i`` is after epoch
``i + 1``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Data",
    "History",
    "accuracy",
    "cross_entropy",
    "init_mlp",
    "load_mnist1d",
    "markdown_table",
    "mean_spread",
    "mlp_apply",
    "output_dir",
    "plot_curves",
    "savefig",
    "seed_keys",
    "summarize",
    "train",
]

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data
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


# ------------------------------------------------------------------------------ MLP
Params = list  # list of {"w": (d_in, d_out), "b": (d_out,)} dicts


def init_mlp(key, sizes: Sequence[int]) -> Params:
    """He-normal initialised MLP parameters for layer widths ``sizes``.

    ``sizes = (40, 256, 256, 10)`` gives two hidden layers. Weights are
    ``N(0, 2 / fan_in)``, biases zero.

    Args:
      key: a PRNG key, or a Python int seed: then the draw is made on the host
        with numpy (no XLA compilation, which matters on a busy CPU).
      sizes: input width, hidden widths..., number of outputs.

    Returns:
      A list of ``{"w": (d_in, d_out), "b": (d_out,)}`` dicts (a pytree).
    """
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    if isinstance(key, int | np.integer):
        rng = np.random.default_rng([int(key), 0])
        return [
            {
                "w": jnp.asarray(rng.standard_normal((m, n)) * np.sqrt(2.0 / m), "f4"),
                "b": jnp.zeros((n,), jnp.float32),
            }
            for m, n in pairs
        ]
    keys = jax.random.split(key, len(pairs))
    return [
        {
            "w": jax.random.normal(k, (m, n), jnp.float32) * jnp.sqrt(2.0 / m),
            "b": jnp.zeros((n,), jnp.float32),
        }
        for k, (m, n) in zip(keys, pairs, strict=True)
    ]


def mlp_apply(
    params: Params,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    hidden: Callable[[jax.Array, jax.Array, int], jax.Array] | None = None,
    inputs: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    return_hidden: bool = False,
):
    """Apply the MLP, optionally regularizing the input and each hidden layer.

    Args:
      params: from :func:`init_mlp`.
      x: inputs ``(B, D)``.
      key: PRNG key for the stochastic hooks (split per layer); may be None when
        the hooks are deterministic.
      hidden: ``hidden(key, h, i) -> h`` applied after the activation of hidden
        layer ``i`` (0-based), e.g.
        ``lambda k, h, i: jaxreg.dropout(k, h, 0.5)``.
      inputs: ``inputs(key, x) -> x`` applied to the input, e.g. input noise or
        input dropout.
      activation: hidden nonlinearity (ReLU by default).
      return_hidden: also return the list of hidden activations (after the
        ``hidden`` hook, i.e. what the next layer sees).

    Returns:
      Logits ``(B, num_outputs)``, or ``(logits, [h_0, h_1, ...])``.
    """
    n = len(params)
    keys = jax.random.split(key, n) if key is not None else [None] * n
    h = x
    if inputs is not None:
        h = inputs(keys[-1], h)
    hs = []
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < n - 1:
            h = activation(h)
            if hidden is not None:
                h = hidden(keys[i], h, i)
            hs.append(h)
    return (h, hs) if return_hidden else h


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of correct argmax predictions."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# ------------------------------------------------------------------------- training
@dataclass
class History:
    """What :func:`train` measured, per seed and per epoch.

    Every array has a leading seed axis ``S``; curves have shape ``(S, E)``.

    Attributes:
      name: the configuration name.
      train_loss: mean training minibatch loss over each epoch (train mode:
        includes the regularizer's noise, excludes penalties).
      train_acc, test_acc: eval-mode accuracy on the full training / test set.
      test_loss: eval-mode cross-entropy on the test set.
      final: dict of ``(S,)`` arrays: ``train_acc``, ``test_acc``, ``gap``
        (train minus test accuracy) of the returned parameters, and
        ``epochs`` (epochs trained; differs from E only with early stopping).
      params: final parameters (with early stopping: the best ones), leading
        seed axis.
      seconds: wall-clock time including compilation.
      extra: free-form per-script results.
    """

    name: str
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    test_loss: np.ndarray
    final: dict[str, np.ndarray]
    params: Any
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, *curves: str) -> dict[str, Any]:
        """The named curves, ``final`` and ``seconds`` as JSON-ready lists."""
        record = {c: getattr(self, c).tolist() for c in curves}
        record["final"] = {k: v.tolist() for k, v in self.final.items()}
        record["seconds"] = self.seconds
        return record

    def report(self, label: str) -> None:
        """Print one progress line: test and train accuracy over the runs, time."""
        f = self.final
        print(
            f"{label}: test {mean_spread(f['test_acc'])}, train "
            f"{mean_spread(f['train_acc'])} ({self.seconds:.0f} s)",
            flush=True,
        )

    def select(self, runs: Sequence[int] | slice, name: str) -> History:
        """The sub-history of some runs (e.g. one configuration of a batched
        :func:`train` call with ``hparams``), renamed ``name``."""
        runs = np.arange(self.test_acc.shape[0])[runs]

        def take(tree):
            return jax.tree.map(lambda a: a[runs] if np.ndim(a) else a, tree)

        return History(
            name=name,
            train_loss=self.train_loss[runs],
            train_acc=self.train_acc[runs],
            test_acc=self.test_acc[runs],
            test_loss=self.test_loss[runs],
            final={k: v[runs] for k, v in self.final.items()},
            params=take(self.params),
            seconds=self.seconds,
            extra=take(self.extra),
        )


def seed_keys(seeds: Sequence[int] | int, *, impl: str = "rbg") -> jax.Array:
    """A batch of typed keys, one per seed (``seeds`` may be a count).

    The default implementation is ``"rbg"`` (XLA's RngBitGenerator): it compiles
    several times faster than threefry on CPU, and jaxreg accepts every key
    implementation.
    """
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    return jax.vmap(lambda s: jax.random.key(s, impl=impl))(jnp.asarray(seeds))


def _where_tree(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def train(
    name: str,
    data: Data,
    *,
    sizes: Sequence[int],
    optimizer: optax.GradientTransformation,
    train_logits: Callable[[Params, jax.Array, jax.Array], jax.Array],
    eval_logits: Callable[[Params, jax.Array], jax.Array] | None = None,
    seeds: Sequence[int] | int = 3,
    epochs: int = 100,
    batch_size: int = 100,
    early_stopping: Any = None,
    validation: Data | None = None,
    progress: Any = True,
    init: Callable[[int], Params] | None = None,
    record: Callable[[Params, jax.Array], Any] | None = None,
    hparams: dict[str, Any] | None = None,
) -> History:
    """Train one configuration on several seeds at once (vmap) and record curves.

    One jitted function runs a whole epoch (a ``lax.scan`` over shuffled
    minibatches, the last partial batch dropped) for all seeds; the Python loop
    over epochs only updates the progress bar. Seeds differ in initialisation,
    data order and regularizer noise; the data set is the same.

    Args:
      name: label for the progress bar and the history.
      data: the data set (test accuracy is measured on ``data.x_test``).
      sizes: MLP widths for :func:`init_mlp` (ignored if ``init`` is given).
      optimizer: an optax transformation (include penalties, projections and
        proximal steps in it).
      train_logits: ``train_logits(params, x, key) -> logits`` (train mode,
        stochastic regularizers use ``key``).
      eval_logits: ``eval_logits(params, x) -> logits`` (inference mode); defaults
        to the plain MLP.
      seeds: seed values or a count.
      epochs: maximum number of epochs.
      batch_size: minibatch size.
      early_stopping: an object with ``init(params)`` and
        ``update(state, metric, params) -> (state, stop)`` (e.g.
        ``jaxreg.early_stopping``), monitored on validation loss; once a seed
        stops its parameters are frozen. The returned params are the
        ``state.best_params`` if present, else the parameters at the stop.
      validation: data whose ``x_test``/``y_test`` give the early-stopping metric
        (see :meth:`Data.split_validation`); required with ``early_stopping``.
      progress: True for a tqdm bar, False for none, or an existing tqdm bar to
        advance by one per epoch (for a shared bar across configurations).
      init: ``init(seed) -> params`` for an int seed; defaults to
        ``init_mlp(seed, sizes)`` (host-side numpy draw).
      record: optional ``record(params, key) -> pytree of arrays`` evaluated
        inside the jitted epoch after every epoch (``key`` is the same fixed key
        at every epoch, for train-mode measurements); the results are stacked in
        ``history.extra["record"]`` with leaves of shape ``(S, E, ...)``.
      hparams: optional per-run hyperparameters, a dict of arrays whose leading
        axis has one entry per run (``len(seeds)`` runs; seeds may repeat, e.g.
        ``seeds=[0, 1, 2] * num_configs``). Then several configurations train in
        ONE compiled program: the run's dict ``hp`` (of traced scalars) is passed
        as an extra last argument to ``train_logits(params, x, key, hp)``,
        ``eval_logits(params, x, hp)`` and ``record(params, key, hp)``, and
        ``optimizer`` may be a callable ``hp -> GradientTransformation`` (jaxreg
        strengths and rates accept traced scalars). Split the result with
        :meth:`History.select`.

    Returns:
      A :class:`History`.
    """
    start = time.perf_counter()
    init = init or (lambda k: init_mlp(k, sizes))
    seed_values = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if hparams is None:
        hp_all = {}
        user_train, user_eval, user_record = train_logits, eval_logits, record
        train_logits = lambda p, x, k, hp: user_train(p, x, k)  # noqa: E731
        eval_logits = None
        if user_eval is not None:
            eval_logits = lambda p, x, hp: user_eval(p, x)  # noqa: E731
        if user_record is not None:
            record = lambda p, k, hp: user_record(p, k)  # noqa: E731
    else:
        hp_all = {k: jnp.asarray(v) for k, v in hparams.items()}
        for k, v in hp_all.items():
            if v.shape[:1] != (len(seed_values),):
                raise ValueError(
                    f"hparams[{k!r}] has shape {v.shape}; its leading axis must "
                    f"have one entry per run ({len(seed_values)} seeds)"
                )
    eval_logits = eval_logits or (lambda p, x, hp: mlp_apply(p, x))

    def optimizer_for(hp) -> optax.GradientTransformation:
        return optimizer(hp) if callable(optimizer) else optimizer

    keys = seed_keys(seed_values)
    xtr, ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    xte, yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    n = xtr.shape[0]
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
    if early_stopping is not None and validation is None:
        raise ValueError("early_stopping needs `validation` data")
    xva = jnp.asarray(validation.x_test) if validation is not None else None
    yva = jnp.asarray(validation.y_test) if validation is not None else None

    def loss_fn(p, x, y, k, hp):
        return cross_entropy(train_logits(p, x, k, hp), y)

    def init_one(params, key, hp):
        opt = optimizer_for(hp).init(params)
        state = {"params": params, "opt": opt, "key": key, "key0": key, "hp": hp}
        if early_stopping is not None:
            state["es"] = early_stopping.init(params)
            state["stopped"] = jnp.asarray(False)
            state["epochs"] = jnp.asarray(0, jnp.int32)
        return state

    def step(carry, idx):
        params, opt_state, key, hp = carry
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, xtr[idx], ytr[idx], sub, hp)
        updates, opt_state = optimizer_for(hp).update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, key, hp), loss

    def evaluate(params, hp):
        lt = eval_logits(params, xtr, hp)
        le = eval_logits(params, xte, hp)
        return accuracy(lt, ytr), accuracy(le, yte), cross_entropy(le, yte)

    def epoch_one(state, batches):
        hp = state["hp"]
        (params, opt, key, _), losses = jax.lax.scan(
            step, (state["params"], state["opt"], state["key"], hp), batches
        )
        new = dict(state, params=params, opt=opt, key=key)
        if early_stopping is not None:
            stopped = state["stopped"]
            # A stopped seed keeps its parameters and early-stopping state.
            new["params"] = _where_tree(stopped, state["params"], params)
            new["opt"] = _where_tree(stopped, state["opt"], opt)
            val = cross_entropy(eval_logits(new["params"], xva, hp), yva)
            es, stop = early_stopping.update(state["es"], val, new["params"])
            new["es"] = _where_tree(stopped, state["es"], es)
            new["stopped"] = stopped | stop
            new["epochs"] = state["epochs"] + (~stopped).astype(jnp.int32)
        tr_acc, te_acc, te_loss = evaluate(new["params"], hp)
        rec = None
        if record is not None:
            rec = record(new["params"], jax.random.fold_in(state["key0"], 7), hp)
        return new, (losses.mean(), tr_acc, te_acc, te_loss, rec)

    init_all = jax.jit(jax.vmap(init_one))
    epoch_all = jax.jit(jax.vmap(epoch_one))
    params0 = [init(s) for s in seed_values]
    state = init_all(jax.tree.map(lambda *a: jnp.stack(a), *params0), keys, hp_all)

    own_bar = progress is True
    bar = None
    if own_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=name, leave=False, dynamic_ncols=True)
    elif progress is not False and progress is not None:
        bar = progress
    curves = []
    # Minibatch order is drawn on the host (numpy, one generator per seed): a
    # device-side permutation costs seconds of compilation on CPU.
    rngs = [np.random.default_rng([int(s), 1]) for s in seed_values]
    for _ in range(epochs):
        batches = np.stack(
            [
                r.permutation(n)[: steps * batch_size].reshape(steps, batch_size)
                for r in rngs
            ]
        )
        state, metrics = epoch_all(state, batches)
        curves.append(metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{name}: test acc {float(metrics[2].mean()):.3f}")
        if early_stopping is not None and bool(state["stopped"].all()):
            break
    if own_bar:
        bar.close()
    recorded = None
    if record is not None:
        recorded = jax.tree.map(
            lambda *a: np.stack([np.asarray(v) for v in a], axis=1),
            *[c[4] for c in curves],
        )
    curves = [np.stack([np.asarray(c[i]) for c in curves], axis=1) for i in range(4)]
    params = state["params"]
    epochs_run = np.full(len(keys), len(curves[0][0]))
    if early_stopping is not None:
        best = getattr(state["es"], "best_params", None)
        if best is not None and jax.tree.structure(best) == jax.tree.structure(params):
            params = best
        epochs_run = np.asarray(state["epochs"])
        tr_acc, te_acc, _ = jax.jit(jax.vmap(evaluate))(params, hp_all)
    else:
        tr_acc, te_acc = curves[1][:, -1], curves[2][:, -1]
    final = {
        "train_acc": np.asarray(tr_acc),
        "test_acc": np.asarray(te_acc),
        "gap": np.asarray(tr_acc - te_acc),
        "epochs": epochs_run,
    }
    return History(
        name=name,
        train_loss=curves[0],
        train_acc=curves[1],
        test_acc=curves[2],
        test_loss=curves[3],
        final=final,
        params=params,
        seconds=time.perf_counter() - start,
        extra={} if recorded is None else {"record": recorded},
    )


# --------------------------------------------------------------------------- tables
def mean_spread(
    values: Sequence[float] | np.ndarray, *, percent: bool = True, digits: int = 1
) -> str:
    """``"mean ± std"`` over seeds (sample std, ddof=1), in percent by default."""
    v = np.asarray(values, dtype=np.float64) * (100.0 if percent else 1.0)
    std = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def summarize(history: History, *, best: bool = False) -> dict[str, str]:
    """One results-table row: test / train accuracy and gap as mean ± std (%).

    With ``best=True`` the row ends with the best test accuracy over epochs.
    """
    f = history.final
    row = {
        "configuration": history.name,
        "test acc (%)": mean_spread(f["test_acc"]),
        "train acc (%)": mean_spread(f["train_acc"]),
        "gap (pp)": mean_spread(f["gap"]),
        "epochs": str(int(np.median(f["epochs"]))),
        "seeds": str(len(f["test_acc"])),
        "time (s)": f"{history.seconds:.1f}",
    }
    if best:
        row["best test acc (%)"] = mean_spread(history.test_acc.max(1))
    return row


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """Render a list of same-keyed dicts as a GitHub-flavoured markdown table."""
    if not rows:
        return ""
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    line = (
        "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"
    )
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True))
        + " |"
        for r in rows
    ]
    return "\n".join([line, sep, *body])


# ---------------------------------------------------------------------- plotting
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    histories: Sequence[History],
    path: str | os.PathLike,
    *,
    title: str = "",
    metrics: Sequence[str] = ("test_acc", "train_acc"),
    ncols: int = 4,
) -> pathlib.Path:
    """Learning curves, one panel per history: mean over seeds, band = min..max.

    Args:
      histories: the configurations to plot.
      path: output PNG path (parent folders are created).
      title: figure title.
      metrics: which curves to draw (``History`` attribute names).
      ncols: panels per row.

    Returns:
      The path written.
    """
    plt = _plt()
    k = len(histories)
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, sharey=True
    )
    styles = {"test_acc": "C0", "train_acc": "C1", "test_loss": "C2"}
    for ax, h in zip(axes.ravel(), histories, strict=False):
        for m in metrics:
            curve = getattr(h, m)
            epochs = np.arange(1, curve.shape[1] + 1)
            ax.plot(epochs, curve.mean(0), color=styles.get(m), label=m, lw=1.2)
            ax.fill_between(
                epochs, curve.min(0), curve.max(0), color=styles.get(m), alpha=0.25
            )
        ax.set_title(h.name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch", fontsize=8)
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return savefig(fig, path)


def savefig(fig, path: str | os.PathLike, *, dpi: int = 110) -> pathlib.Path:
    """Save a matplotlib figure as PNG (creating folders) and close it."""
    plt = _plt()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def guide_parser(doc: str | None):
    """The command line shared by the guide scripts: ``--out``, ``--cache``,
    ``--quick`` and ``--seeds``; each script adds its own options."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--out", default="docs/guide/figures")
    ap.add_argument("--cache", default="results/cache", help="MNIST-1D .npz cache")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    ap.add_argument("--seeds", type=int, default=3)
    return ap


def output_dir(path: str | os.PathLike) -> pathlib.Path:
    """Create and return an output folder (relative paths are from the cwd)."""
    p = pathlib.Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p
