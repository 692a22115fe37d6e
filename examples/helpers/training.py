"""The training loop of the examples: seeds (and configurations) vmapped, one
compiled program per epoch, histories of every curve."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from examples.helpers.datasets import Data
from examples.helpers.models import Params, accuracy, cross_entropy, init_mlp, mlp_apply
from examples.helpers.reporting import mean_spread

__all__ = ["History", "seed_keys", "train"]


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
    seed_values = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    train_logits, eval_logits, record, hp_all = _per_run_hparams(
        train_logits, eval_logits, record, hparams, len(seed_values)
    )
    if early_stopping is not None and validation is None:
        raise ValueError("early_stopping needs `validation` data")
    program = _EpochProgram(
        data,
        optimizer=optimizer,
        train_logits=train_logits,
        eval_logits=eval_logits,
        batch_size=batch_size,
        early_stopping=early_stopping,
        validation=validation,
        record=record,
    )
    init = init or (lambda k: init_mlp(k, sizes))
    params0 = [init(s) for s in seed_values]
    state = program.init(
        jax.tree.map(lambda *a: jnp.stack(a), *params0), seed_keys(seed_values), hp_all
    )
    bar, own_bar = _progress_bar(progress, name, epochs)
    curves = []
    # Minibatch order is drawn on the host (numpy, one generator per seed): a
    # device-side permutation costs seconds of compilation on CPU.
    rngs = [np.random.default_rng([int(s), 1]) for s in seed_values]
    for _ in range(epochs):
        state, metrics = program.epoch(state, program.batches(rngs))
        curves.append(metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{name}: test acc {float(metrics[2].mean()):.3f}")
        if early_stopping is not None and bool(state["stopped"].all()):
            break
    if own_bar:
        bar.close()
    return program.history(name, state, curves, hp_all, time.perf_counter() - start)


def _per_run_hparams(train_logits, eval_logits, record, hparams, num_runs):
    """The user's functions with a trailing per-run ``hp`` argument, and ``hp``.

    Without ``hparams`` the functions are wrapped to ignore an empty ``hp``; with
    them every leading axis must have one entry per run.
    """
    if hparams is None:
        user_train, user_eval, user_record = train_logits, eval_logits, record

        def train_fn(p, x, k, hp):
            return user_train(p, x, k)

        eval_fn = record_fn = None
        if user_eval is not None:

            def eval_fn(p, x, hp):
                return user_eval(p, x)

        if user_record is not None:

            def record_fn(p, k, hp):
                return user_record(p, k)

        hp_all = {}
    else:
        train_fn, eval_fn, record_fn = train_logits, eval_logits, record
        hp_all = {k: jnp.asarray(v) for k, v in hparams.items()}
        for k, v in hp_all.items():
            if v.shape[:1] != (num_runs,):
                raise ValueError(
                    f"hparams[{k!r}] has shape {v.shape}; its leading axis must "
                    f"have one entry per run ({num_runs} seeds)"
                )
    if eval_fn is None:

        def eval_fn(p, x, hp):
            return mlp_apply(p, x)

    return train_fn, eval_fn, record_fn, hp_all


def _progress_bar(progress, name: str, epochs: int):
    """``(bar, own)``: a new tqdm bar (``progress=True``), the one given, or None."""
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=epochs, desc=name, leave=False, dynamic_ncols=True), True
    if progress is False or progress is None:
        return None, False
    return progress, False


class _EpochProgram:
    """The compiled pieces of :func:`train`: init, one epoch and the evaluation,
    each vmapped over runs; and the assembly of the :class:`History`."""

    def __init__(
        self,
        data: Data,
        *,
        optimizer,
        train_logits,
        eval_logits,
        batch_size: int,
        early_stopping,
        validation: Data | None,
        record,
    ):
        self.xtr, self.ytr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
        self.xte, self.yte = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
        self.n = self.xtr.shape[0]
        self.batch_size = batch_size
        self.steps = self.n // batch_size
        if self.steps < 1:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {self.n} training examples"
            )
        self.optimizer = optimizer
        self.train_logits, self.eval_logits = train_logits, eval_logits
        self.early_stopping, self.record = early_stopping, record
        self.xva = jnp.asarray(validation.x_test) if validation is not None else None
        self.yva = jnp.asarray(validation.y_test) if validation is not None else None
        self.init = jax.jit(jax.vmap(self._init_one))
        self.epoch = jax.jit(jax.vmap(self._epoch_one))

    def _optimizer_for(self, hp) -> optax.GradientTransformation:
        optimizer = self.optimizer
        return optimizer(hp) if callable(optimizer) else optimizer

    def batches(self, rngs) -> np.ndarray:
        """One epoch of shuffled minibatch indices per run ``(S, steps, B)``."""
        size = self.steps * self.batch_size
        return np.stack(
            [r.permutation(self.n)[:size].reshape(self.steps, -1) for r in rngs]
        )

    def _init_one(self, params, key, hp):
        opt = self._optimizer_for(hp).init(params)
        state = {"params": params, "opt": opt, "key": key, "key0": key, "hp": hp}
        if self.early_stopping is not None:
            state["es"] = self.early_stopping.init(params)
            state["stopped"] = jnp.asarray(False)
            state["epochs"] = jnp.asarray(0, jnp.int32)
        return state

    def _step(self, carry, idx):
        params, opt_state, key, hp = carry
        key, sub = jax.random.split(key)

        def loss_fn(p):
            logits = self.train_logits(p, self.xtr[idx], sub, hp)
            return cross_entropy(logits, self.ytr[idx])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = self._optimizer_for(hp).update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, key, hp), loss

    def evaluate(self, params, hp):
        """Train accuracy, test accuracy and test loss (inference mode)."""
        lt = self.eval_logits(params, self.xtr, hp)
        le = self.eval_logits(params, self.xte, hp)
        return (
            accuracy(lt, self.ytr),
            accuracy(le, self.yte),
            cross_entropy(le, self.yte),
        )

    def _early_stop(self, state, new, params, opt, hp):
        """Freeze stopped runs and advance the early-stopping state."""
        stopped = state["stopped"]
        # A stopped seed keeps its parameters and early-stopping state.
        new["params"] = _where_tree(stopped, state["params"], params)
        new["opt"] = _where_tree(stopped, state["opt"], opt)
        val = cross_entropy(self.eval_logits(new["params"], self.xva, hp), self.yva)
        es, stop = self.early_stopping.update(state["es"], val, new["params"])
        new["es"] = _where_tree(stopped, state["es"], es)
        new["stopped"] = stopped | stop
        new["epochs"] = state["epochs"] + (~stopped).astype(jnp.int32)
        return new

    def _epoch_one(self, state, batches):
        hp = state["hp"]
        (params, opt, key, _), losses = jax.lax.scan(
            self._step, (state["params"], state["opt"], state["key"], hp), batches
        )
        new = dict(state, params=params, opt=opt, key=key)
        if self.early_stopping is not None:
            new = self._early_stop(state, new, params, opt, hp)
        tr_acc, te_acc, te_loss = self.evaluate(new["params"], hp)
        rec = None
        if self.record is not None:
            key = jax.random.fold_in(state["key0"], 7)
            rec = self.record(new["params"], key, hp)
        return new, (losses.mean(), tr_acc, te_acc, te_loss, rec)

    def history(self, name, state, curves, hp_all, seconds) -> History:
        """The :class:`History` of a finished run of epochs."""
        recorded = None
        if self.record is not None:
            recorded = jax.tree.map(
                lambda *a: np.stack([np.asarray(v) for v in a], axis=1),
                *[c[4] for c in curves],
            )
        curves = [
            np.stack([np.asarray(c[i]) for c in curves], axis=1) for i in range(4)
        ]
        params = state["params"]
        epochs_run = np.full(curves[0].shape[0], curves[0].shape[1])
        if self.early_stopping is not None:
            best = getattr(state["es"], "best_params", None)
            if best is not None and jax.tree.structure(best) == jax.tree.structure(
                params
            ):
                params = best
            epochs_run = np.asarray(state["epochs"])
            tr_acc, te_acc, _ = jax.jit(jax.vmap(self.evaluate))(params, hp_all)
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
            seconds=seconds,
            extra={} if recorded is None else {"record": recorded},
        )
