r"""Regularization as optax gradient transformations.

Three kinds, each an :class:`optax.GradientTransformation` with a ``NamedTuple``
state, composable with :func:`optax.chain`, :func:`optax.masked`,
:func:`optax.inject_hyperparams`, :class:`optax.MultiSteps` and
:func:`optax.apply_if_finite`, and safe under ``jax.jit``:

* **Penalties** (:func:`add_penalty`, :func:`add_l1`, :func:`add_l2`) add
  ``strength * grad(penalty)(params)`` to the incoming gradients. Put them
  *before* the optimizer (coupled regularization: the penalty gradient is
  rescaled by Adam & co. like the loss gradient).
* **Projections** (:func:`project`, :func:`max_norm_constraint`,
  :func:`unit_norm_constraint`, :func:`min_max_norm_constraint`,
  :func:`non_neg_constraint`) rewrite the final updates so that
  ``optax.apply_updates(params, updates)`` lands on the projection of the
  unconstrained step. Put them *last*.
* **Proximal steps** (:func:`l1_prox`, :func:`group_lasso_prox`,
  :func:`elastic_net_prox`) apply the proximal operator of
  :math:`\eta\lambda\,\Omega` to the result of the step, where :math:`\eta` is the
  optimizer's learning rate (pass it again) and :math:`\lambda` the strength: with
  :func:`optax.sgd` this is proximal gradient descent (ISTA), which produces exact
  zeros. Put them *last*, like projections.

``strength`` and ``learning_rate`` are Python floats (validated eagerly), traced
scalars (e.g. under :func:`optax.inject_hyperparams`; not validated) or optax
schedules ``count -> value`` evaluated at the transform's own step count.

``mask`` selects the leaves a transform acts on (the others pass through
unchanged): a pytree of bools with the structure of the parameters (or a
prefix), or a callable ``params -> mask`` such as :func:`jaxreg.mask_by_ndim`.
It is implemented with :func:`optax.masked` (so the state is an
``optax.MaskedState`` around the transform's own state), after checking the
structure. Leaves that are not floating-point (integer step counters, boolean
flags, non-array leaves) are never touched, masked or not: their updates pass
through unchanged, as do ``None`` updates (Equinox's ``filter_grad`` gives
``None`` for such leaves). A leaf a transform cannot handle (e.g. an ``axis`` out
of range for it) raises an error naming its path and the ``mask`` that skips it.

A traced ``strength`` or ``learning_rate`` (or a schedule's value) cannot be
validated in Python: a negative one acts as 0, like ``dropout``'s traced rate
outside ``[0, 1]``.

Under :func:`optax.inject_hyperparams`, every callable argument is taken for a
schedule and every number becomes a traced hyperparameter, so list the
arguments that are neither in ``static_args``: ``penalty_fn``,
``projection_fn``, ``axis`` and a callable ``mask`` (e.g.
``optax.inject_hyperparams(jaxreg.add_penalty, static_args=("penalty_fn",
"mask"))``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._checks import (
    check_axes,
    check_axes_syntax,
    check_int,
    check_nonnegative,
    check_norm_bounds,
    check_positive,
    check_unit_interval,
    fill_doc,
)
from jaxreg._numerics import clip_traced, norm_parts, promote_f32, safe_div
from jaxreg._trees import (
    check_mask,
    check_stacked_axes,
    flatten_like,
    float_grad,
    is_float_leaf,
    map_float_params,
    on_leaf,
    per_layer,
    resolve_mask,
    resolve_stacked,
)
from jaxreg.constraints import (
    max_norm,
    max_spectral_norm,
    min_max_norm,
    non_neg,
    unit_norm,
)
from jaxreg.penalties import l1, l2

__all__ = [
    "PenaltyState",
    "ProxState",
    "SpectralNormState",
    "add_l1",
    "add_l2",
    "add_penalty",
    "elastic_net_prox",
    "group_lasso_prox",
    "l1_prox",
    "max_norm_constraint",
    "min_max_norm_constraint",
    "non_neg_constraint",
    "project",
    "spectral_norm_constraint",
    "unit_norm_constraint",
]

PyTree = Any


class PenaltyState(NamedTuple):
    """State of :func:`add_penalty`: the number of updates so far (for schedules)."""

    count: jax.Array


class ProxState(NamedTuple):
    """State of the proximal transforms: the number of updates so far."""

    count: jax.Array


class SpectralNormState(NamedTuple):
    """State of :func:`spectral_norm_constraint`.

    ``u`` is a pytree with the structure of the parameters: at every constrained
    kernel its power-iteration vector (float32, shape ``layer axes + (out,)``),
    None at the other leaves.
    """

    u: Any


_MASK_STACKED_DOC = (
    "mask: optional bool pytree (or callable) of the leaves to constrain.\n"
    "      stacked_axes: leading layer axes of stacked layers (as for\n"
    "        :func:`project`); ``axis`` counts on the per-layer shape."
)


def _adder_doc(penalty: str) -> str:
    """The Args, Returns and Raises sections of ``add_<penalty>``."""
    return (
        "Args:\n"
        "      strength: :math:`\\lambda \\ge 0`: a float, a traced scalar, or a "
        "schedule.\n"
        "      mask: optional bool pytree (or callable) of the leaves to regularize.\n"
        "\n"
        "    Returns:\n"
        f"      :func:`add_penalty` of :func:`jaxreg.{penalty}`.\n"
        "\n"
        "    Raises:\n"
        "      ValueError: negative ``strength``; ``params=None`` in ``update``."
    )


def _check_hparam(value, name: str):
    """A schedule passes through; a number must be >= 0 (traced: unchecked)."""
    if callable(value):
        return value
    return check_nonnegative(value, name)


def _at(value, count):
    """The hyperparameter at step ``count``; a traced negative value acts as 0."""
    return clip_traced(value(count) if callable(value) else value, 0.0)


def _require_params(params, name: str) -> None:
    if params is None:
        raise ValueError(
            f"`{name}` needs the current parameters, but `update` got params=None. "
            "Call `tx.update(updates, opt_state, params)`."
        )


def _with_mask(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
    if mask is None:
        return tx
    check_mask(mask)  # a bad leaf type is a user error at build time
    return optax.masked(tx, functools.partial(resolve_mask, mask))


def _stepped(u, p):
    """``optax.apply_updates`` for one leaf: ``p + u`` in the dtype of ``p``."""
    return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)


def _update_to(target, u, p):
    """The update that moves ``p`` to ``target``, in the dtype of ``u``."""
    return jnp.asarray(target - p).astype(jnp.asarray(u).dtype)


def _counted(name: str, state_cls, step, mask) -> optax.GradientTransformation:
    """The (masked) transform ``name`` whose state ``state_cls`` counts the
    updates: ``step(updates, params, count)`` gives the new updates, and ``params``
    are required."""

    def init_fn(params):
        del params
        return state_cls(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        _require_params(params, name)
        new = step(updates, params, state.count)
        return new, state_cls(count=optax.safe_int32_increment(state.count))

    return _with_mask(optax.GradientTransformation(init_fn, update_fn), mask)


def add_penalty(
    penalty_fn: Callable[[PyTree], jax.Array], strength, *, mask=None
) -> optax.GradientTransformation:
    r"""Add the gradient of ``strength * penalty_fn(params)`` to the updates.

    .. math::

       g \leftarrow g + \lambda_t \nabla \Omega(w),

    with :math:`\Omega` = ``penalty_fn`` and :math:`\lambda_t` = ``strength`` at
    step :math:`t`. This is coupled regularization: place it before the optimizer
    in an :func:`optax.chain`, so the optimizer sees the gradient of
    ``loss + strength * penalty``.

    Args:
      penalty_fn: a scalar function of the parameter pytree (e.g.
        :func:`jaxreg.l1`, :func:`jaxreg.group_lasso`, or a ``functools.partial``
        of one). With a ``mask`` it sees the parameters with the excluded leaves
        replaced by ``optax.MaskedNode``.
      strength: :math:`\lambda \ge 0`: a float, a traced scalar, or a schedule.
      mask: optional bool pytree (or callable ``params -> mask``) of the leaves to
        regularize.

    Returns:
      An :class:`optax.GradientTransformation` whose state is a
      :class:`PenaltyState` (inside ``optax.MaskedState`` when masked).

    Raises:
      TypeError: ``penalty_fn`` not callable; ``strength`` not a number/schedule.
      ValueError: negative ``strength``; ``update`` called with ``params=None``;
        a mask with another structure than the parameters.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = optax.chain(jaxreg.add_penalty(jaxreg.l1, 0.1), optax.sgd(1.0))
      >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
      >>> updates["w"]
      Array([-0.1,  0.1], dtype=float32)
      >>> # With inject_hyperparams, mark penalty_fn static (it is not a schedule):
      >>> tx = optax.inject_hyperparams(jaxreg.add_penalty, static_args="penalty_fn")(
      ...     penalty_fn=jaxreg.l2, strength=0.5)
      >>> tx.update({"w": jnp.zeros(2)}, tx.init(params), params)[0]["w"]
      Array([ 0.5, -1. ], dtype=float32)
    """
    if not callable(penalty_fn):
        raise TypeError(
            "`penalty_fn` must be a function params -> scalar (e.g. jaxreg.l1); got "
            f"{type(penalty_fn).__name__} {penalty_fn!r}."
        )
    strength = _check_hparam(strength, "strength")

    def step(updates, params, count):
        s = _at(strength, count)
        grads = float_grad(penalty_fn, params)  # non-float leaves: no gradient
        return map_float_params(
            lambda _, u, p, g: jnp.asarray(u + s * g).astype(jnp.asarray(u).dtype),
            updates,
            params,
            grads,
        )

    return _counted("add_penalty", PenaltyState, step, mask)


@fill_doc(adder_sections=_adder_doc("l1"))
def add_l1(strength, *, mask=None) -> optax.GradientTransformation:
    r"""Add :math:`\lambda_t \operatorname{sign}(w)`, the gradient of :math:`\lambda\|w\|_1`.

    The subgradient step makes weights oscillate around zero rather than reach it;
    use :func:`l1_prox` for exact zeros.

    {adder_sections}

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.add_l1(0.1)
      >>> w = jnp.array([2.0, 0.0, -3.0])
      >>> tx.update(jnp.zeros(3), tx.init(w), w)[0]
      Array([ 0.1,  0. , -0.1], dtype=float32)

    References:
      Tibshirani. "Regression Shrinkage and Selection via the Lasso." JRSS B 58(1),
      1996. https://doi.org/10.1111/j.2517-6161.1996.tb02080.x
    """
    return add_penalty(l1, strength, mask=mask)


@fill_doc(adder_sections=_adder_doc("l2"))
def add_l2(strength, *, mask=None) -> optax.GradientTransformation:
    r"""Add :math:`\lambda_t w`, the gradient of :math:`\tfrac{\lambda}{2}\|w\|_2^2`.

    Before an adaptive optimizer this is L2 regularization (coupled: the decay is
    rescaled by the preconditioner). Placed after ``optax.scale_by_adam()`` and
    before the learning-rate scaling it is decoupled weight decay (AdamW,
    Loshchilov & Hutter), the same step as :func:`optax.add_decayed_weights`.

    {adder_sections}

    Examples:
      >>> import jax.numpy as jnp, jaxreg
      >>> tx = jaxreg.add_l2(0.5)
      >>> w = jnp.array([2.0, -4.0])
      >>> tx.update(jnp.zeros(2), tx.init(w), w)[0]
      Array([ 1., -2.], dtype=float32)

    References:
      Loshchilov, Hutter. "Decoupled Weight Decay Regularization." ICLR 2019.
      https://arxiv.org/abs/1711.05101
    """
    return add_penalty(l2, strength, mask=mask)


def project(
    projection_fn: Callable[[jax.Array], jax.Array], *, mask=None, stacked_axes=None
) -> optax.GradientTransformation:
    r"""Rewrite the updates so that the step lands on ``projection_fn``'s output.

    For each selected leaf, with :math:`w' = ` ``optax.apply_updates(w, u)`` the
    unconstrained result of the step,

    .. math::

       u \leftarrow P(w') - w ,

    so that ``optax.apply_updates(w, u)`` gives :math:`P(w')` up to one rounding of
    the addition (exactly, where :math:`P(w')` is 0). That rounding is relative to
    the larger of :math:`|w|` and :math:`|P(w')|`: a step from weights around 1e30
    onto a norm of 1 cannot land exactly in float32 (the plain function can).
    This is projected gradient descent; put the transform last in the chain,
    after the learning rate. Non-float leaves (int counters, bool flags) are not
    projected: their updates pass through.

    Args:
      projection_fn: a function mapping one parameter array to its projection
        (e.g. ``functools.partial(jaxreg.max_norm, max_value=3.0)``); applied to
        every selected leaf.
      mask: optional bool pytree (or callable) of the leaves to constrain; use
        ``mask=jaxreg.mask_by_ndim`` to leave biases and norm scales alone.
      stacked_axes: leading layer axes of stacked layers (see
        :func:`jaxreg.mask_by_ndim`): ``projection_fn`` is applied to each
        layer's slice on its own (``jax.vmap`` over the layer axes), as on the
        unstacked model.

    Returns:
      An :class:`optax.GradientTransformation` with state ``optax.EmptyState``
      (inside ``optax.MaskedState`` when masked).

    Raises:
      TypeError: ``projection_fn`` not callable; a bad ``stacked_axes``.
      ValueError: ``params=None`` in ``update``; a mask with another structure;
        ``stacked_axes`` above a leaf's rank.
        A ValueError/TypeError raised by ``projection_fn`` on a leaf is re-raised
        with the leaf's path and the ``mask`` that excludes it.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([1.0, 2.0])
      >>> tx = optax.chain(optax.sgd(1.0), jaxreg.project(jaxreg.non_neg))
      >>> u, _ = tx.update(jnp.array([3.0, 1.0]), tx.init(w), w)
      >>> optax.apply_updates(w, u)
      Array([0., 1.], dtype=float32)
    """
    if not callable(projection_fn):
        raise TypeError(
            "`projection_fn` must be a function array -> array (e.g. jaxreg.non_neg);"
            f" got {type(projection_fn).__name__} {projection_fn!r}."
        )

    def init_fn(params):
        del params
        return optax.EmptyState()

    check_stacked_axes(stacked_axes)

    def project_leaf(path, u, p, k):
        fn = per_layer(projection_fn, k)
        return _update_to(on_leaf(fn, path, _stepped(u, p)), u, p)

    def update_fn(updates, state, params=None):
        _require_params(params, "project")
        counts = resolve_stacked(stacked_axes, params)
        return map_float_params(project_leaf, updates, params, counts), state

    return _with_mask(optax.GradientTransformation(init_fn, update_fn), mask)


@fill_doc(mask_stacked=_MASK_STACKED_DOC)
def max_norm_constraint(
    max_value, *, axis=0, mask=None, stacked_axes=None
) -> optax.GradientTransformation:
    r"""Project onto per-slice norm :math:`\le` ``max_value`` after each step.

    :func:`project` of :func:`jaxreg.max_norm` (Srivastava et al. 2014 use it with
    dropout: ``max_value`` 3 to 4 on each unit's incoming weights).

    Args:
      max_value: the largest allowed norm, ``> 0``.
      axis: int or tuple, the axes the norm runs over (Keras semantics, applied to
        every selected leaf); under :func:`optax.inject_hyperparams` pass
        ``static_args="axis"``.
      {mask_stacked}

    Returns:
      An :class:`optax.GradientTransformation`.

    Raises:
      ValueError: ``max_value <= 0``; at ``update``, ``axis`` out of range for a
        selected leaf or ``params=None``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
      >>> tx = optax.chain(optax.sgd(1.0), jaxreg.max_norm_constraint(
      ...     1.0, mask=jaxreg.mask_by_ndim))
      >>> g = {"kernel": jnp.array([[-3.0, 0.0], [-4.0, 0.0]]), "bias": -jnp.ones(2) * 5}
      >>> new = optax.apply_updates(w, tx.update(g, tx.init(w), w)[0])
      >>> new["kernel"], new["bias"]
      (Array([[0.6, 0. ], [0.8, 0. ]], dtype=float32), Array([5., 5.], dtype=float32))

    References:
      Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov. "Dropout: A Simple
      Way to Prevent Neural Networks from Overfitting." JMLR 15, 2014.
      https://jmlr.org/papers/v15/srivastava14a.html
    """
    check_positive(max_value, "max_value")
    check_axes_syntax(axis)
    return project(
        functools.partial(max_norm, max_value=max_value, axis=axis),
        mask=mask,
        stacked_axes=stacked_axes,
    )


@fill_doc(mask_stacked=_MASK_STACKED_DOC)
def unit_norm_constraint(
    *, axis=0, mask=None, stacked_axes=None
) -> optax.GradientTransformation:
    """Project each slice onto the unit sphere after each step (:func:`jaxreg.unit_norm`).

    Args:
      axis: int or tuple, the axes the norm runs over (Keras semantics).
      {mask_stacked}

    Returns:
      An :class:`optax.GradientTransformation`.

    Raises:
      ValueError: at ``update``, ``axis`` out of range for a selected leaf or
        ``params=None``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([[1.0], [0.0]])
      >>> tx = jaxreg.unit_norm_constraint()
      >>> optax.apply_updates(w, tx.update(jnp.array([[2.0], [4.0]]), tx.init(w), w)[0])
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    check_axes_syntax(axis)
    return project(
        functools.partial(unit_norm, axis=axis), mask=mask, stacked_axes=stacked_axes
    )


@fill_doc(mask_stacked=_MASK_STACKED_DOC)
def min_max_norm_constraint(
    min_value, max_value, *, rate=1.0, axis=0, mask=None, stacked_axes=None
) -> optax.GradientTransformation:
    """Keep each slice's norm in ``[min_value, max_value]`` after each step.

    :func:`project` of :func:`jaxreg.min_max_norm`.

    Args:
      min_value: lower norm bound, ``>= 0``.
      max_value: upper norm bound, ``>= min_value``.
      rate: fraction in ``[0, 1]`` of the way to move toward the interval per step.
      axis: int or tuple, the axes the norm runs over (Keras semantics).
      {mask_stacked}

    Returns:
      An :class:`optax.GradientTransformation`.

    Raises:
      ValueError: bad bounds or rate (eagerly); at ``update``, ``axis`` out of
        range for a selected leaf or ``params=None``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([[0.3], [0.4]])
      >>> tx = jaxreg.min_max_norm_constraint(1.0, 2.0)
      >>> optax.apply_updates(w, tx.update(jnp.zeros((2, 1)), tx.init(w), w)[0])
      Array([[0.6],
             [0.8]], dtype=float32)
    """
    check_norm_bounds(min_value, max_value)
    check_unit_interval(rate, "rate")
    check_axes_syntax(axis)
    return project(
        functools.partial(
            min_max_norm,
            min_value=min_value,
            max_value=max_value,
            rate=rate,
            axis=axis,
        ),
        mask=mask,
        stacked_axes=stacked_axes,
    )


def non_neg_constraint(*, mask=None) -> optax.GradientTransformation:
    """Clip the parameters at 0 from below after each step (:func:`jaxreg.non_neg`).

    Args:
      mask: optional bool pytree (or callable) of the leaves to constrain.

    Returns:
      An :class:`optax.GradientTransformation`.

    Raises:
      ValueError: ``params=None`` in ``update``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([1.0, 1.0])
      >>> tx = jaxreg.non_neg_constraint()
      >>> optax.apply_updates(w, tx.update(jnp.array([-2.0, 0.5]), tx.init(w), w)[0])
      Array([0. , 1.5], dtype=float32)
    """
    return project(non_neg, mask=mask)


def spectral_norm_constraint(
    max_value=1.0,
    *,
    n_power_iterations: int = 1,
    seed: int = 0,
    mask=None,
    stacked_axes=None,
) -> optax.GradientTransformation:
    r"""Keep every kernel's spectral norm at most ``max_value`` after each step.

    A projection (put it last in the chain, like :func:`project`): each selected
    floating leaf with at least 2 dimensions per layer is read as the matrix
    ``(prod(others), out)`` (a conv kernel ``(h, w, in, out)`` as
    ``(h * w * in, out)``), its largest singular value is estimated by power
    iteration from a vector ``u`` carried in the transform state (one per kernel
    and per layer of a stack), and the kernel is rescaled onto the bound when the
    estimate exceeds it (:func:`jaxreg.max_spectral_norm`). As in Miyato et al.
    2018 one iteration per step suffices once ``u`` has converged, since the
    weights change little between steps. Leaves that are not floating or have
    fewer than 2 dimensions (biases, norm scales, counters) are left alone.

    This complements Flax's ``SpectralNorm`` wrapper, which divides the kernel
    by its spectral norm in the forward pass: here the parameters themselves are
    projected (a constraint, not a reparameterization), for any model.

    Args:
      max_value: the bound ``> 0`` on each kernel's largest singular value.
      n_power_iterations: power-iteration steps per update, an int ``>= 1``.
      seed: an int seeding the initial vectors ``u`` (one per kernel, drawn
        from ``jax.random.key(seed)`` folded with the leaf's index).
      mask: optional bool pytree (or callable) of the leaves to constrain.
      stacked_axes: leading layer axes of stacked layers (as for
        :func:`project`): one ``u`` and one bound per layer.

    Returns:
      An :class:`optax.GradientTransformation` with a
      :class:`SpectralNormState` (inside ``optax.MaskedState`` when masked).

    Raises:
      ValueError: ``max_value <= 0``; ``n_power_iterations < 1``; a bad
        ``stacked_axes``; ``params=None`` in ``update``.
      TypeError: non-int ``n_power_iterations`` or ``seed``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jaxreg
      >>> w = {"kernel": jnp.diag(jnp.array([4.0, 1.0])), "bias": jnp.ones(2)}
      >>> tx = jaxreg.spectral_norm_constraint(2.0)
      >>> state = tx.init(w)
      >>> for _ in range(3):
      ...     u, state = tx.update(jax.tree.map(jnp.zeros_like, w), state, w)
      ...     w = optax.apply_updates(w, u)
      >>> bool(jnp.linalg.norm(w["kernel"], 2) <= 2.0 * (1 + 1e-5))
      True
      >>> w["bias"]  # 1-D: left alone
      Array([1., 1.], dtype=float32)

    References:
      Miyato, Kataoka, Koyama, Yoshida. "Spectral Normalization for Generative
      Adversarial Networks." ICLR 2018. https://arxiv.org/abs/1802.05957
    """
    check_positive(max_value, "max_value")
    n_iter = check_int(n_power_iterations, "n_power_iterations", minimum=1)
    seed = check_int(seed, "seed")
    check_stacked_axes(stacked_axes)

    def kernels(params):
        counts = resolve_stacked(stacked_axes, params)
        treedef, leaves, (ks,) = flatten_like(params, counts)
        flags = [
            is_float_leaf(p) and jnp.ndim(p) - k >= 2
            for p, k in zip(leaves, ks, strict=True)
        ]
        return treedef, leaves, ks, flags

    def init_fn(params):
        treedef, leaves, ks, flags = kernels(params)
        base = jax.random.key(seed)
        us = []
        for i, (p, k, f) in enumerate(zip(leaves, ks, flags, strict=True)):
            if not f:
                us.append(None)
                continue
            shape = jnp.shape(p)[:k] + jnp.shape(p)[-1:]
            u = jax.random.normal(jax.random.fold_in(base, i), shape, jnp.float32)
            us.append(u / jnp.linalg.norm(u, axis=-1, keepdims=True))
        return SpectralNormState(u=treedef.unflatten(us))

    def update_fn(updates, state, params=None):
        _require_params(params, "spectral_norm_constraint")
        treedef, leaves, ks, flags = kernels(params)
        _, _, (ups, us) = flatten_like(params, updates, state.u)
        new_ups, new_us = [], []
        for p, k, f, up, u in zip(leaves, ks, flags, ups, us, strict=True):
            if not f or up is None:
                new_ups.append(up)
                new_us.append(u)
                continue
            w, u = max_spectral_norm(
                _stepped(up, p), max_value, u, n_power_iterations=n_iter, stacked_axes=k
            )
            new_ups.append(_update_to(w, up, p))
            new_us.append(u)
        return treedef.unflatten(new_ups), SpectralNormState(
            u=treedef.unflatten(new_us)
        )

    return _with_mask(optax.GradientTransformation(init_fn, update_fn), mask)


# ---------------------------------------------------------------------------
# Proximal steps.
# ---------------------------------------------------------------------------


def _prox_transform(
    name: str, prox: Callable, strength, learning_rate, mask, stacked_axes=None
):
    """Shared plumbing of the transform ``name``: ``u <- prox(w + u, t) - w`` on
    every floating leaf (each layer's slice of a stacked leaf on its own), with
    ``t = learning_rate * strength`` at this step."""
    strength = _check_hparam(strength, "strength")
    learning_rate = _check_hparam(learning_rate, "learning_rate")
    check_stacked_axes(stacked_axes)

    def prox_leaf(path, u, p, k, t):
        fn = per_layer(prox, k, in_axes=(0, None))
        return _update_to(on_leaf(fn, path, _stepped(u, p), t), u, p)

    def step(updates, params, count):
        t = _at(learning_rate, count) * _at(strength, count)
        counts = resolve_stacked(stacked_axes, params)
        return map_float_params(
            lambda path, u, p, k: prox_leaf(path, u, p, k, t),
            updates,
            params,
            counts,
        )

    return _counted(name, ProxState, step, mask)


def _soft_threshold(w: jax.Array, t) -> jax.Array:
    wf = promote_f32(w)
    return (jnp.sign(wf) * jnp.maximum(jnp.abs(wf) - t, 0.0)).astype(w.dtype)


def l1_prox(strength, learning_rate, *, mask=None) -> optax.GradientTransformation:
    r"""Proximal step of the L1 penalty: soft-thresholding, with exact zeros.

    With :math:`w' = w + u` the result of the optimizer's step and
    :math:`t = \eta_t \lambda_t`,

    .. math::

       \operatorname{prox}_{t\|\cdot\|_1}(w')_i =
       \operatorname{sign}(w'_i)\max(|w'_i| - t, 0),

    and the updates are rewritten to land there. After :func:`optax.sgd` with
    learning rate :math:`\eta` this is ISTA for
    :math:`\text{loss}(w) + \lambda\|w\|_1`: entries with :math:`|w'_i| \le t` become
    exactly 0.

    Args:
      strength: :math:`\lambda \ge 0`: a float, a traced scalar, or a schedule.
      learning_rate: :math:`\eta \ge 0`, the optimizer's learning rate (float,
        traced scalar or the same schedule).
      mask: optional bool pytree (or callable) of the leaves to regularize.

    Returns:
      An :class:`optax.GradientTransformation` with a :class:`ProxState`; put it
      last in the chain.

    Raises:
      ValueError: negative ``strength`` or ``learning_rate``; ``params=None`` in
        ``update``; a mask with another structure.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([0.05, -1.0, 2.0])
      >>> tx = optax.chain(optax.sgd(0.1), jaxreg.l1_prox(1.0, 0.1))
      >>> optax.apply_updates(w, tx.update(jnp.zeros(3), tx.init(w), w)[0])
      Array([ 0. , -0.9,  1.9], dtype=float32)

    References:
      Tibshirani. "Regression Shrinkage and Selection via the Lasso." JRSS B 58(1),
      1996. https://doi.org/10.1111/j.2517-6161.1996.tb02080.x ;
      Beck, Teboulle. "A Fast Iterative Shrinkage-Thresholding Algorithm for Linear
      Inverse Problems." SIAM J. Imaging Sci. 2(1), 2009.
      https://doi.org/10.1137/080716542
    """
    return _prox_transform("l1_prox", _soft_threshold, strength, learning_rate, mask)


def group_lasso_prox(
    strength, learning_rate, *, axis=0, mask=None, stacked_axes=None
) -> optax.GradientTransformation:
    r"""Proximal step of :func:`jaxreg.group_lasso`: block soft-thresholding.

    For each group :math:`g` (the entries sharing all indices outside ``axis``) of
    size :math:`p_g`, with :math:`t = \eta_t \lambda_t`,

    .. math::

       w_g \leftarrow w'_g \max\!\left(0,\ 1 - \frac{t\sqrt{p_g}}{\|w'_g\|_2}\right),

    so whole groups (units, features, filters) become exactly 0.

    Args:
      strength: :math:`\lambda \ge 0`: a float, a traced scalar, or a schedule.
      learning_rate: :math:`\eta \ge 0`, the optimizer's learning rate.
      axis: int or tuple, the axes a group spans (as in :func:`jaxreg.group_lasso`);
        under :func:`optax.inject_hyperparams` pass ``static_args="axis"``.
      mask: optional bool pytree (or callable) of the leaves to regularize.
      stacked_axes: leading layer axes of stacked layers (as for
        :func:`project`); groups are formed within each layer.

    Returns:
      An :class:`optax.GradientTransformation` with a :class:`ProxState`; put it
      last in the chain.

    Raises:
      ValueError: negative ``strength`` or ``learning_rate``; at ``update``,
        ``axis`` out of range for a selected leaf or ``params=None``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([[3.0, 0.03], [4.0, 0.04]])  # group norms 5 and 0.05
      >>> tx = jaxreg.group_lasso_prox(1.0, 0.5 / 2**0.5)  # t * sqrt(2) = 0.5
      >>> new = optax.apply_updates(w, tx.update(jnp.zeros((2, 2)), tx.init(w), w)[0])
      >>> bool(jnp.allclose(new, jnp.array([[2.7, 0.0], [3.6, 0.0]])))
      True
      >>> new[:, 1]  # the small group is exactly zero
      Array([0., 0.], dtype=float32)

    References:
      Yuan, Lin. "Model selection and estimation in regression with grouped
      variables." JRSS B 68(1), 2006. https://doi.org/10.1111/j.1467-9868.2005.00532.x
    """
    check_axes_syntax(axis)

    def block_soft_threshold(w, t):
        axes = check_axes(axis, w.ndim)
        size = math.prod(w.shape[a] for a in axes)
        scale, unit = norm_parts(w, axis=axes, keepdims=True)
        norms = scale * unit  # may overflow to inf (the factor is then 1)
        thresh = t * math.sqrt(size)
        factor = jnp.where(norms > thresh, 1.0 - safe_div(thresh, norms), 0.0)
        return (promote_f32(w) * factor).astype(w.dtype)

    return _prox_transform(
        "group_lasso_prox",
        block_soft_threshold,
        strength,
        learning_rate,
        mask,
        stacked_axes,
    )


def elastic_net_prox(
    strength, learning_rate, *, l1_ratio: float = 0.5, mask=None
) -> optax.GradientTransformation:
    r"""Proximal step of :func:`jaxreg.elastic_net`.

    With :math:`t = \eta_t \lambda_t` and :math:`\rho` = ``l1_ratio``, the proximal
    operator of :math:`t(\rho\|w\|_1 + \frac{1-\rho}{2}\|w\|_2^2)` is

    .. math::

       w_i \leftarrow \frac{\operatorname{sign}(w'_i)\max(|w'_i| - t\rho, 0)}
       {1 + t(1 - \rho)} .

    ``l1_ratio=1`` is :func:`l1_prox`; ``l1_ratio=0`` is a multiplicative decay.

    Args:
      strength: :math:`\lambda \ge 0`: a float, a traced scalar, or a schedule.
      learning_rate: :math:`\eta \ge 0`, the optimizer's learning rate.
      l1_ratio: :math:`\rho \in [0, 1]` (scikit-learn's parameterisation).
      mask: optional bool pytree (or callable) of the leaves to regularize.

    Returns:
      An :class:`optax.GradientTransformation` with a :class:`ProxState`; put it
      last in the chain.

    Raises:
      ValueError: negative ``strength``/``learning_rate``; ``l1_ratio`` outside
        ``[0, 1]``; ``params=None`` in ``update``.

    Examples:
      >>> import jax.numpy as jnp, optax, jaxreg
      >>> w = jnp.array([0.2, -3.0])
      >>> tx = jaxreg.elastic_net_prox(1.0, 1.0, l1_ratio=0.5)
      >>> optax.apply_updates(w, tx.update(jnp.zeros(2), tx.init(w), w)[0])
      Array([ 0.       , -1.6666666], dtype=float32)

    References:
      Zou, Hastie. "Regularization and variable selection via the elastic net."
      JRSS B 67(2), 2005. https://doi.org/10.1111/j.1467-9868.2005.00503.x
    """
    rho = check_unit_interval(l1_ratio, "l1_ratio")

    def shrink(w, t):
        r = clip_traced(rho, 0.0, 1.0)
        shrunk = _soft_threshold(promote_f32(w), t * r)
        return (shrunk / (1.0 + t * (1.0 - r))).astype(w.dtype)

    return _prox_transform("elastic_net_prox", shrink, strength, learning_rate, mask)
