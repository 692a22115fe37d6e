"""Rates that vary with depth and with time.

*Depth.* :func:`drop_path_rates` gives each residual block of a deep network its
stochastic-depth rate (linear in depth, as in Huang et al. 2016 and timm), as an
array to scan over alongside stacked layer parameters.

*Time.* The schedules are ``optax.Schedule``-style callables ``step -> rate``: pure,
``jit``-able, and the step may be traced. Called inside one compiled training
step, they hand :func:`jaxreg.dropout` (and every other function of the family) a
traced rate, so the rate changes every step without recompiling. They are built
from optax's own schedules and combine with them (``optax.join_schedules``,
``optax.linear_schedule``, ...); any optax schedule whose values lie in ``[0, 1]``
is a valid rate schedule too.

Concrete arguments are validated when the schedule is built; a traced rate
cannot be validated and is documented as the caller's responsibility.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg._checks import check_int, check_positive, check_rate, fill_doc

__all__ = [
    "curriculum_dropout",
    "drop_path_rates",
    "early_dropout",
    "late_dropout",
    "linear_ramp",
]

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]

_RULES = ("linspace", "huang")

# Docstring text the schedules share (see `fill_doc`).
_RETURNS = "Returns:\n      A schedule ``step -> rate`` (float32 scalar), ``jit``-able in ``step``."
_LIU_2023 = (
    "References:\n"
    '      Liu, Xu, Jin, Shen, Darrell. "Dropout Reduces Underfitting." ICML 2023.\n'
    "      https://arxiv.org/abs/2303.01500"
)


def _raises(steps: str, *more: str) -> str:
    """The Raises section of a schedule of ``rate`` and the step count ``steps``."""
    bad = ", ".join(("bad ``rate``", f"negative ``{steps}``", *more))
    return f"Raises:\n      ValueError: {bad}.\n      TypeError: non-int ``{steps}``."


def _fractions(n: int, rule: str) -> np.ndarray:
    """The fractions of the maximal rate for ``n`` equally spaced positions."""
    if rule == "linspace":
        return np.linspace(0.0, 1.0, n)
    return np.arange(1, n + 1) / n


def _stage_depths(depth) -> tuple[int, ...] | None:
    """``None`` for an int ``depth``, else the checked stage depths."""
    if isinstance(depth, (int, np.integer)) and not isinstance(depth, bool):
        check_int(depth, "depth", minimum=1)
        return None
    if isinstance(depth, (str, bytes)) or not isinstance(depth, Sequence):
        raise TypeError(
            "`depth` must be the number of blocks (an int) or the number of blocks "
            f"per stage (a sequence of ints); got {type(depth).__name__} {depth!r}."
        )
    if not depth:
        raise ValueError("`depth` must name at least one stage; got depth=().")
    for d in depth:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"`depth` must contain ints; got {d!r} in {depth!r}.")
        if d < 1:
            raise ValueError(
                f"every stage needs at least one block; got depth={tuple(depth)!r}."
            )
    return tuple(int(d) for d in depth)


def drop_path_rates(
    depth: int | Sequence[int],
    max_rate,
    *,
    stagewise: bool = False,
    rule: str = "linspace",
):
    """Stochastic-depth rates that grow linearly with depth.

    Two endpoint conventions (``rule``) are in use, for ``n`` positions
    ``i = 0, ..., n - 1``:

    * ``"linspace"`` (default): ``max_rate * i / (n - 1)``, i.e. from 0 at the
      first block to ``max_rate`` at the last; this is timm's
      ``torch.linspace(0, drop_path_rate, depth)`` (ViT, DeiT, and, split per
      stage, ConvNeXt and Swin). A single block gets rate 0.
    * ``"huang"``: ``max_rate * (i + 1) / n``, the linear decay rule of Huang et
      al. (2016), survival probability ``p_l = 1 - (l / L)(1 - p_L)`` for blocks
      ``l = 1, ..., L``: the first block already has ``max_rate / n``, the last
      ``max_rate``.

    With ``depth`` an int the positions are the blocks. With ``depth`` a
    sequence of stage depths and ``stagewise=False`` they are all blocks of all
    stages, numbered through the stages, and the result is split per stage
    (timm's ConvNeXt and Swin:
    ``torch.linspace(0, drop_path_rate, sum(depths)).split(depths)``). With
    ``stagewise=True`` the positions are the stages: every block of stage ``s``
    gets the stage's rate (constant within a stage, linear across stages).

    Args:
      depth: the number of blocks (int ``>= 1``), or the number of blocks per
        stage (a sequence of ints ``>= 1``).
      max_rate: the rate of the last position, in ``[0, 1]``. May be traced (for
        instance a schedule's value, so the whole profile ramps up over time);
        a traced value cannot be validated.
      stagewise: one rate per stage instead of one per block (requires stage
        depths).
      rule: ``"linspace"`` or ``"huang"``, as above.

    Returns:
      For an int ``depth``, a float32 array of shape ``(depth,)``; for stage
      depths, a tuple with one float32 array per stage, of that stage's length.

    Raises:
      TypeError: ``depth`` neither an int nor a sequence of ints, non-bool
        ``stagewise``, non-scalar ``max_rate``.
      ValueError: a depth ``< 1``, ``max_rate`` outside ``[0, 1]`` or NaN,
        unknown ``rule``, ``stagewise=True`` with an int ``depth``.

    Examples:
      >>> import jaxreg
      >>> jaxreg.schedules.drop_path_rates(5, 0.2)
      Array([0.  , 0.05, 0.1 , 0.15, 0.2 ], dtype=float32)
      >>> jaxreg.schedules.drop_path_rates(4, 0.2, rule="huang")
      Array([0.05, 0.1 , 0.15, 0.2 ], dtype=float32)
      >>> [r.tolist() for r in jaxreg.schedules.drop_path_rates((1, 2), 0.2)]
      [[0.0], [0.1..., 0.2...]]
      >>> s = jaxreg.schedules.drop_path_rates((2, 1), 0.2, stagewise=True)
      >>> [r.tolist() for r in s]
      [[0.0, 0.0], [0.2...]]

    References:
      Huang, Sun, Liu, Sedra, Weinberger. "Deep Networks with Stochastic Depth."
      ECCV 2016, section 3 ("linear decay rule").
      https://arxiv.org/abs/1603.09382
    """
    stages = _stage_depths(depth)
    if not isinstance(stagewise, bool):
        raise TypeError(
            f"`stagewise` must be a Python bool; got {type(stagewise).__name__} "
            f"{stagewise!r}."
        )
    if rule not in _RULES:
        raise ValueError(f"`rule` must be one of {_RULES}; got rule={rule!r}.")
    max_rate = check_rate(max_rate, "max_rate")
    if stages is None:
        if stagewise:
            raise ValueError(
                "`stagewise=True` needs the number of blocks per stage, e.g. "
                f"depth=(3, 3, 9, 3); got depth={depth!r}."
            )
        return jnp.asarray(_fractions(depth, rule), jnp.float32) * max_rate
    if stagewise:
        per_stage = _fractions(len(stages), rule)
        fractions = np.repeat(per_stage, stages)
    else:
        fractions = _fractions(sum(stages), rule)
    rates = jnp.asarray(fractions, jnp.float32) * max_rate
    bounds = np.cumsum(stages)[:-1].tolist()
    return tuple(jnp.split(rates, bounds))


def _check_steps(steps, name: str) -> int:
    return check_int(steps, name, minimum=0)


@fill_doc(returns=_RETURNS)
def linear_ramp(rate, steps: int, *, begin: int = 0, initial_rate=0.0) -> Schedule:
    """A rate that rises linearly from ``initial_rate`` to ``rate``, then stays.

    The value is ``initial_rate`` up to step ``begin``, moves linearly to ``rate``
    over the next ``steps`` steps and stays at ``rate`` afterwards: it is
    ``optax.linear_schedule(initial_rate, rate, steps, begin)`` with both rates
    checked. A decreasing ramp (``initial_rate > rate``) is allowed.

    Args:
      rate: the final rate, in ``[0, 1]``.
      steps: the length of the ramp in steps, an int ``>= 0`` (0 jumps to
        ``rate`` at ``begin``).
      begin: the step at which the ramp starts, an int ``>= 0``.
      initial_rate: the rate before and at ``begin``, in ``[0, 1]``.

    {returns}

    Raises:
      ValueError: a rate outside ``[0, 1]`` or NaN, negative ``steps``/``begin``.
      TypeError: non-int ``steps``/``begin``, non-scalar rates.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxreg
      >>> ramp = jaxreg.schedules.linear_ramp(0.4, 100)
      >>> [round(float(ramp(s)), 3) for s in (0, 50, 100, 1000)]
      [0.0, 0.2, 0.4, 0.4]

      As a traced rate inside one compiled step:

      >>> step_fn = jax.jit(lambda key, x, step: jaxreg.dropout(key, x, ramp(step)))
      >>> step_fn(jax.random.key(0), jnp.ones(3), 0)   # rate 0 at step 0
      Array([1., 1., 1.], dtype=float32)
    """
    rate = check_rate(rate)
    initial_rate = check_rate(initial_rate, "initial_rate")
    steps = _check_steps(steps, "steps")
    begin = _check_steps(begin, "begin")
    if steps == 0:
        return optax.join_schedules(
            [optax.constant_schedule(initial_rate), optax.constant_schedule(rate)],
            [begin],
        )
    ramp = optax.linear_schedule(initial_rate, rate, steps, begin)
    low = jnp.minimum(initial_rate, rate)
    high = jnp.maximum(initial_rate, rate)

    def schedule(step):
        # optax's interpolation can overshoot an end point by a rounding error
        # under jit (e.g. -7e-9 at the end of a ramp down to 0); a rate never
        # leaves the interval between the two rates.
        return jnp.clip(ramp(step), low, high)

    return schedule


@fill_doc(
    returns=_RETURNS,
    raises=_raises("steps", "unknown ``mode``"),
    liu_2023=_LIU_2023,
)
def early_dropout(rate, steps: int, *, mode: str = "constant") -> Schedule:
    """Early dropout: dropout for the first ``steps`` steps only, then none.

    Liu et al. (2023) find that dropout in the early phase of training reduces
    *underfitting*: it lowers the variance of mini-batch gradients and aligns
    them with the full-batch gradient, and turning it off afterwards lets the
    model fit the data. ``mode="constant"`` uses ``rate`` for steps
    ``0, ..., steps - 1``; ``mode="linear"`` decreases it linearly from ``rate``
    at step 0 to 0 at step ``steps`` (the two early schedules of the paper's
    code). From step ``steps`` on the rate is 0.

    Args:
      rate: the early rate, in ``[0, 1]``.
      steps: the number of steps with dropout, an int ``>= 0``.
      mode: ``"constant"`` or ``"linear"``.

    {returns}

    {raises}

    Examples:
      >>> import jaxreg
      >>> early = jaxreg.schedules.early_dropout(0.1, 1000)
      >>> [float(early(s)) for s in (0, 999, 1000)]
      [0.1..., 0.1..., 0.0]
      >>> fading = jaxreg.schedules.early_dropout(0.1, 1000, mode="linear")
      >>> [round(float(fading(s)), 4) for s in (0, 500, 1000)]
      [0.1, 0.05, 0.0]

    {liu_2023}
    """
    rate = check_rate(rate)
    steps = _check_steps(steps, "steps")
    if mode == "constant":
        return optax.join_schedules(
            [optax.constant_schedule(rate), optax.constant_schedule(0.0)], [steps]
        )
    if mode == "linear":
        return linear_ramp(0.0, steps, initial_rate=rate)
    raise ValueError(f"`mode` must be 'constant' or 'linear'; got mode={mode!r}.")


@fill_doc(returns=_RETURNS, raises=_raises("start"), liu_2023=_LIU_2023)
def late_dropout(rate, start: int) -> Schedule:
    """Late dropout: no dropout before step ``start``, ``rate`` from then on.

    The counterpart of :func:`early_dropout` in Liu et al. (2023), for models
    that overfit: the first ``start`` steps train without dropout, the rest
    with the full rate.

    Args:
      rate: the late rate, in ``[0, 1]``.
      start: the first step with dropout, an int ``>= 0``.

    {returns}

    {raises}

    Examples:
      >>> import jaxreg
      >>> late = jaxreg.schedules.late_dropout(0.3, 50)
      >>> [float(late(s)) for s in (0, 49, 50)]
      [0.0, 0.0, 0.3...]

    {liu_2023}
    """
    rate = check_rate(rate)
    start = _check_steps(start, "start")
    return linear_ramp(rate, 0, begin=start)


@fill_doc(returns=_RETURNS)
def curriculum_dropout(rate, gamma) -> Schedule:
    """Curriculum dropout: the rate rises smoothly from 0 towards ``rate``.

    Morerio et al. (2017) schedule the *retain* probability as
    ``theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar``, from 1 at ``t = 0``
    to the final ``theta_bar``; in terms of the drop rate, with
    ``rate = 1 - theta_bar``::

        rate(t) = rate * (1 - exp(-gamma * t)).

    ``gamma`` is per step: the rate reaches ``1 - e**-1`` (63%) of its final
    value after ``1 / gamma`` steps and 99.995% after ``10 / gamma``; the
    authors' released code uses ``gamma = 0.001`` per iteration. A common choice
    is ``gamma = 10 / total_steps``.

    Args:
      rate: the final rate ``1 - theta_bar``, in ``[0, 1]``.
      gamma: the rate constant per step, ``> 0``.

    {returns}

    Raises:
      ValueError: bad ``rate``, ``gamma <= 0`` or NaN.
      TypeError: non-scalar arguments.

    Examples:
      >>> import jaxreg
      >>> curriculum = jaxreg.schedules.curriculum_dropout(0.5, gamma=0.01)
      >>> [round(float(curriculum(s)), 4) for s in (0, 100, 1000)]
      [0.0, 0.3161, 0.5]

    References:
      Morerio, Cavazza, Volpi, Vidal, Murino. "Curriculum Dropout." ICCV 2017.
      https://arxiv.org/abs/1703.06229
    """
    rate = check_rate(rate)
    gamma = check_positive(gamma, "gamma")

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        return jnp.asarray(rate, jnp.float32) * -jnp.expm1(-gamma * t)

    return schedule
