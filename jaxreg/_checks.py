"""Argument checks shared by the whole library.

Python numbers are validated eagerly, before tracing, and every error names the
argument and echoes the value it got (shortened by :func:`short_repr`). Traced
values (schedules under ``jit``, ``optax.inject_hyperparams``) cannot be inspected
in Python and pass through; the public docstrings say so. One checker per kind of
argument: rates, finite reals with a bound, ints with a minimum, choices among
strings, axes and shapes, thresholds, flags and floating arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = [
    "check_layer_axes",
    "check_layer_names",
    "check_stacked_count",
    "check_axes",
    "check_axes_syntax",
    "check_axis",
    "check_bool",
    "check_broadcast_dims",
    "check_callable",
    "check_choice",
    "check_class_labels",
    "check_finite",
    "check_flag",
    "check_float_array",
    "check_int",
    "check_nonnegative",
    "check_norm_bounds",
    "check_out_sharding",
    "check_positive",
    "check_rate",
    "check_real_scalar",
    "check_same_shape",
    "check_shard_spec",
    "check_shape",
    "check_str",
    "check_threshold",
    "check_unit_interval",
    "compute_dtype",
    "fill_doc",
    "float32_or_wider",
    "is_static",
    "short_repr",
    "spec_entries",
    "static_value",
]


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for echoing bad arguments)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fill_doc(**parts):
    """Decorator: replace each ``{name}`` in a docstring by ``parts[name]``.

    For text that several public docstrings share (an argument's description, a
    Returns section, a reference): written once by the module, where each
    docstring says ``{name}``; continuation lines carry their own indentation.
    """

    def write(fn):
        if fn.__doc__ is not None:  # None under python -OO
            for name, text in parts.items():
                fn.__doc__ = fn.__doc__.replace("{" + name + "}", text)
        return fn

    return write


def _described(value) -> str:
    """``"<type> <short repr>"``, e.g. ``"float 2.5"``, for TypeErrors."""
    return f"{type(value).__name__} {short_repr(value)}"


def _is_int(value) -> bool:
    """A Python or NumPy integer (bools are not ints here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def _as_sequence(value) -> tuple | None:
    """``value`` as a tuple if it is a sequence (not a string) or a 1-D array."""
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return tuple(value.tolist())
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(value)
    return None


def is_static(value) -> bool:
    """True if ``value`` is a concrete Python/NumPy number (not a tracer)."""
    if isinstance(value, (bool, int, float, np.number)):
        return True
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return True
    if isinstance(value, jax.Array) and value.ndim == 0:
        try:
            float(value)
        except (jax.errors.ConcretizationTypeError, TypeError):
            return False
        return True
    return False


def static_value(value) -> float | None:
    """``float(value)`` if ``value`` is concrete, else None."""
    return float(value) if is_static(value) else None


def _check_scalar(value, name: str):
    if isinstance(value, bool) or not (
        isinstance(value, (int, float, np.number, np.ndarray, jax.Array))
    ):
        raise TypeError(
            f"`{name}` must be a real scalar (a Python float or a 0-d array); "
            f"got {_described(value)}."
        )
    shape = np.shape(value)
    if shape != ():
        raise ValueError(f"`{name}` must be a scalar; got an array of shape {shape}.")
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"`{name}` must be a real number; got dtype {dtype}.")


def check_real_scalar(value, name: str):
    """A real (integer or floating) scalar, concrete or traced; NaN and inf pass.

    Raises:
      TypeError: not a number, a bool, a complex number, None, a string, ...
      ValueError: an array that is not 0-d.
    """
    _check_scalar(value, name)
    return value


def check_rate(rate, name: str = "rate", *, allow_one: bool = True):
    """Check a drop probability.

    A concrete rate must lie in ``[0, 1]`` (``[0, 1)`` if ``allow_one`` is False) and
    is returned as a Python float. A traced rate is returned unchanged (it cannot be
    checked in Python).

    Raises:
      TypeError: if ``rate`` is not a real scalar.
      ValueError: if a concrete ``rate`` is NaN or outside the allowed interval.
    """
    _check_scalar(rate, name)
    value = static_value(rate)
    if value is None:
        return rate
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if math.isnan(value) or value < 0.0 or not upper_ok:
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(
            f"`{name}` is the probability of dropping a unit and must lie in "
            f"{interval}; got {name}={value!r}. Note: the rate is not the keep rate!"
        )
    return value


def _check_real(value, name: str, *, above=None, at_least=None):
    """A finite real scalar, optionally ``> above`` or ``>= at_least``.

    A concrete value is returned as a Python float; a traced one unchanged.
    """
    _check_scalar(value, name)
    v = static_value(value)
    if v is None:
        return value
    if above is not None and not v > above:
        raise ValueError(f"`{name}` must be > {above:g}; got {name}={v!r}.")
    if at_least is not None and not v >= at_least:
        raise ValueError(f"`{name}` must be >= {at_least:g}; got {name}={v!r}.")
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite; got {name}={v!r}.")
    return v


def check_finite(value, name: str):
    """A finite real scalar (a concrete one is returned as float; traced passes)."""
    return _check_real(value, name)


def check_nonnegative(value, name: str):
    """A finite scalar ``>= 0`` (a concrete one is returned as float).

    NaN and infinity are rejected: an infinite strength, noise level or bound
    gives inf or NaN results.
    """
    return _check_real(value, name, at_least=0.0)


def check_positive(value, name: str):
    """A finite scalar ``> 0`` (a concrete one is returned as float)."""
    return _check_real(value, name, above=0.0)


def check_unit_interval(value, name: str):
    """Check a fraction that must lie in ``[0, 1]`` (a smoothing factor, ...).

    Like :func:`check_rate` but without the drop-probability wording: a concrete
    value is returned as a Python float, a traced one unchanged.
    """
    _check_scalar(value, name)
    v = static_value(value)
    if v is None:
        return value
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"`{name}` must lie in [0, 1]; got {name}={v!r}.")
    return v


def check_norm_bounds(min_value, max_value):
    """Norm bounds ``0 <= min_value <= max_value``, both finite (traced pass).

    Returns the pair, concrete values as Python floats.
    """
    lo = check_nonnegative(min_value, "min_value")
    hi = check_nonnegative(max_value, "max_value")
    if isinstance(lo, float) and isinstance(hi, float) and lo > hi:
        raise ValueError(
            f"`min_value` must be <= `max_value`; got min_value={lo!r}, "
            f"max_value={hi!r}."
        )
    return lo, hi


def check_threshold(value, name: str = "threshold") -> float:
    """A Python number compared against data (``inf`` allowed, NaN is not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"`{name}` must be a Python number; got {_described(value)}.")
    if math.isnan(value):
        raise ValueError(f"`{name}` must not be NaN; got {name}={value!r}.")
    return float(value)


def check_int(value, name: str, *, minimum: int | None = None, allow_none=False):
    """A Python or NumPy int (not a bool), ``>= minimum``; returned as ``int``.

    Ints that fix array shapes or loop lengths must be concrete: a traced value
    is an error. ``None`` passes through when ``allow_none``.

    Raises:
      TypeError: not an int.
      ValueError: below ``minimum``.
    """
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"`{name}` must be a Python int; got {_described(value)}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {name}={int(value)}.")
    return int(value)


def check_layer_names(value, name: str = "stacked_axes") -> tuple[str, ...] | None:
    """Layer-axis names (a str or a non-empty sequence of strs) as a tuple; None
    when ``value`` is not a str or a sequence made only of strs."""
    if isinstance(value, str):
        return (value,)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    return None


def check_stacked_count(value, ndim: int | None = None, name: str = "stacked_axes"):
    """A number of leading layer axes: a Python int ``>= 0`` (None means 0),
    at most ``ndim`` when the rank of the array is known.

    Raises:
      TypeError: not an int (a bool, a float, a traced value).
      ValueError: negative, or more layer axes than the array has dimensions.
    """
    if value is None:
        return 0
    if not _is_int(value):
        raise TypeError(
            f"`{name}` must be the number of leading layer axes (a Python int >= 0), "
            "axis names such as 'layers', a pytree of ints or a callable "
            f"params -> pytree of ints; got {_described(value)}."
        )
    if value < 0:
        raise ValueError(
            f"`{name}` counts leading layer axes and must be >= 0; got {name}="
            f"{int(value)}."
        )
    if ndim is not None and value > ndim:
        raise ValueError(
            f"`{name}`={int(value)} leading layer axes do not fit an array of rank "
            f"{ndim}."
        )
    return int(value)


def check_layer_axes(
    axis, ndim: int, stacked_axes, name: str = "axis"
) -> tuple[int, ...]:
    """``axis`` counted on the per-layer shape (rank ``ndim`` less the
    ``stacked_axes`` leading layer axes), returned as sorted axes of the whole
    array (see :func:`check_axes`, :func:`check_stacked_count`)."""
    k = check_stacked_count(stacked_axes, ndim)
    return tuple(a + k for a in check_axes(axis, ndim - k, name))


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """One of the strings ``choices`` (compared exactly, case included)."""
    if isinstance(value, str) and value in choices:
        return value
    names = [repr(c) for c in choices]
    listed = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
    raise ValueError(f"`{name}` must be {listed}; got {name}={short_repr(value)}.")


def check_float_array(x, name: str = "x") -> jax.Array:
    """Return ``x`` as a JAX array, requiring a floating dtype.

    Raises:
      TypeError: for integer, boolean or complex input, or non-array objects.
    """
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        dtype = x.dtype
    elif isinstance(x, (int, float, np.number)) and not isinstance(x, bool):
        dtype = np.result_type(x)
    else:
        raise TypeError(
            f"`{name}` must be an array of floating dtype (a jax.Array, numpy array "
            f"or Python float); got {_described(x)}. Convert it first, "
            f"e.g. `{name}=jnp.asarray({name}, jnp.float32)`."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating dtype (float32, bfloat16, float16, ...); "
            f"got dtype {dtype}. Cast it first, e.g. `{name}.astype(jnp.float32)`."
        )
    return jnp.asarray(x)


# ---------------------------------------------------------------------------
# Axes and shapes: one checker, used by every function that takes them.
# ---------------------------------------------------------------------------


def _int_sequence(value, expected: str, hint: str, name: str) -> tuple[int, ...]:
    """``value`` (a sequence, not a string, or a 1-D array) as a tuple of ints.

    Raises a TypeError that starts with ``expected`` and echoes ``value`` (and
    the offending element), followed by ``hint``.
    """
    items = _as_sequence(value)
    if items is None:
        raise TypeError(f"{expected}; got {_described(value)}. {hint}".rstrip())
    for item in items:
        if not _is_int(item):
            raise TypeError(
                f"{expected}; got {_described(item)} in {name}={short_repr(value)}. "
                f"{hint}".rstrip()
            )
    return tuple(int(item) for item in items)


def _range_error(name: str, shown, axis: int, ndim: int, *, many: bool):
    valid = f"(valid: {-ndim}..{ndim - 1})"
    if many:
        return ValueError(
            f"`{name}`={shown} has axis {axis}, out of range for an array of rank "
            f"{ndim} {valid}."
        )
    return ValueError(
        f"`{name}`={shown} is out of range for an array of rank {ndim} {valid}."
    )


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """Normalize one axis index for an array of rank ``ndim``."""
    if not _is_int(axis):
        raise TypeError(f"`{name}` must be an int; got {_described(axis)}.")
    if not -ndim <= axis < ndim:
        raise _range_error(name, int(axis), int(axis), ndim, many=False)
    return int(axis) % ndim


def check_axes_syntax(
    axis, name: str = "axis", *, allow_empty: bool = False, allow_repeats=False
) -> tuple[int, ...]:
    """An int or a sequence of ints, checked without knowing the rank.

    Returns the axes as a tuple of ints (as given: not normalized). Used to
    validate an ``axis`` eagerly when the arrays it will apply to come later.

    Raises:
      TypeError: not an int or a sequence of ints (the message echoes ``axis``).
      ValueError: an empty sequence (unless ``allow_empty``); the same axis twice
        (unless ``allow_repeats``).
    """
    if _is_int(axis):
        return (int(axis),)
    axes = _int_sequence(
        axis,
        f"`{name}` must be an int or a tuple of ints",
        f'(Under `optax.inject_hyperparams`, pass `static_args="{name}"`.)',
        name,
    )
    if not axes and not allow_empty:
        raise ValueError(f"`{name}` must name at least one axis; got {name}={axis!r}.")
    if not allow_repeats and len(set(axes)) != len(axes):
        raise ValueError(f"`{name}` repeats an axis; got {name}={axis!r}.")
    return axes


def check_axes(
    axis,
    ndim: int,
    name: str = "axis",
    *,
    allow_empty: bool = False,
    allow_repeats: bool = False,
) -> tuple[int, ...]:
    """Normalize an int or a sequence of ints to sorted distinct axes ``>= 0``.

    Raises:
      TypeError: not an int or a sequence of ints.
      ValueError: an axis out of range for rank ``ndim`` (the message echoes the
        value passed, not the normalized one); an empty sequence (unless
        ``allow_empty``); an axis named twice, also as ``0`` and ``-ndim``
        (unless ``allow_repeats``).
    """
    axes = check_axes_syntax(
        axis, name, allow_empty=allow_empty, allow_repeats=allow_repeats
    )
    shown = int(axis) if _is_int(axis) else _as_sequence(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise _range_error(name, shown, a, ndim, many=not _is_int(axis))
    out = [a % ndim for a in axes]
    if not allow_repeats and len(set(out)) != len(out):
        raise ValueError(
            f"`{name}` repeats an axis; got {name}={shown} for an array of rank {ndim}."
        )
    return tuple(sorted(set(out)))


def check_broadcast_dims(
    broadcast_dims: Sequence[int] | int, ndim: int, name: str = "broadcast_dims"
) -> tuple[int, ...]:
    """Normalize ``broadcast_dims`` (an int or a sequence, possibly empty)."""
    if _is_int(broadcast_dims):
        broadcast_dims = (broadcast_dims,)
    return check_axes(broadcast_dims, ndim, name, allow_empty=True, allow_repeats=True)


def check_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """A sequence of non-negative ints (a tuple, list or 1-D integer array).

    Floats (even ``2.0``), bools and strings are rejected rather than converted.

    Raises:
      TypeError: not a sequence of ints (the message echoes ``shape``).
      ValueError: a negative size.
    """
    out = _int_sequence(shape, f"`{name}` must be a sequence of ints", "", name)
    if any(s < 0 for s in out):
        raise ValueError(f"`{name}` must not have negative sizes; got {name}={out}.")
    return out


def check_bool(value, name: str) -> bool:
    """A Python bool that selects a code path at trace time (e.g. ``deterministic``)."""
    if not isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a Python bool (it selects the code path at trace "
            f"time); got {type(value).__name__} {value!r}."
        )
    return value


def compute_dtype(x: jax.Array):
    """The dtype arithmetic on ``x`` runs in: ``x.dtype`` promoted to float32."""
    return float32_or_wider(x.dtype)


def check_class_labels(labels, num_classes: int, shape, name: str = "labels"):
    """Integer class indices of the given ``shape``, in ``[0, num_classes)``.

    The range is checked when ``labels`` is concrete; traced labels cannot be
    (callers document what an out-of-range traced label gives).

    Raises:
      TypeError: non-array or non-integer labels (floats, bools, one-hot rows).
      ValueError: wrong shape, or a concrete label outside ``[0, num_classes)``.
    """
    if not (hasattr(labels, "dtype") and hasattr(labels, "shape")):
        if isinstance(labels, (list, tuple, int, np.integer)) and not isinstance(
            labels, bool
        ):
            labels = np.asarray(labels)
        else:
            raise TypeError(
                f"`{name}` must be an array of integer class indices; got "
                f"{type(labels).__name__} {labels!r}."
            )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`{name}` must hold integer class indices; got dtype {labels.dtype}. "
            f"Cast class indices with `{name}.astype(jnp.int32)`; for one-hot or "
            "soft labels use `optax.softmax_cross_entropy`."
        )
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)} (the logits' shape without "
            f"the class axis); got shape {tuple(labels.shape)}."
        )
    if not isinstance(labels, jax.core.Tracer) and labels.size:
        values = np.asarray(labels)
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f"[{', '.join(map(str, first))}]" if first else ""
            raise ValueError(
                f"`{name}` must lie in [0, {num_classes}) for {num_classes} classes; "
                f"got {name}{where}={int(values[first])}."
            )
    return jnp.asarray(labels)


def check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    """Two arrays that must have the same shape (e.g. two passes' logits)."""
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same shape; got "
            f"{name_a}.shape={a.shape} and {name_b}.shape={b.shape}."
        )


def spec_entries(spec, ndim: int) -> tuple[tuple[str, ...], ...]:
    """The mesh axis names splitting each of ``ndim`` axes, from a PartitionSpec."""
    entries = tuple(spec) + (None,) * (ndim - len(spec))
    return tuple(
        () if e is None else (tuple(e) if isinstance(e, (tuple, list)) else (e,))
        for e in entries
    )


def _check_spec_rank(spec, ndim: int, name: str) -> None:
    if len(spec) > ndim:
        raise ValueError(
            f"`{name}`={spec} has {len(spec)} entries, more than the {ndim} axes "
            "of the array it describes."
        )


def check_shard_spec(shard_spec, ndim: int, name: str = "shard_spec"):
    """Check the PartitionSpec of a shard's block inside ``jax.shard_map``.

    Returns None for None, else per axis the tuple of the manual mesh axes that
    split it (padded with ``()`` to ``ndim`` axes).

    Raises:
      TypeError: ``shard_spec`` is not a ``PartitionSpec``.
      ValueError: more entries than axes; used outside ``shard_map``; an axis
        name the mesh lacks, one that is not manual in the enclosing
        ``shard_map``, or one used twice.
    """
    if shard_spec is None:
        return None
    if not isinstance(shard_spec, PartitionSpec):
        raise TypeError(
            f"`{name}` must be a jax.sharding.PartitionSpec (the `in_specs` entry "
            f"of the data in the enclosing jax.shard_map); got "
            f"{type(shard_spec).__name__} {shard_spec!r}."
        )
    _check_spec_rank(shard_spec, ndim, name)
    mesh = jax.sharding.get_abstract_mesh()
    types = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))
    manual = [n for n, t in types.items() if t == AxisType.Manual]
    if not manual:
        raise ValueError(
            f"`{name}`={shard_spec} is only meaningful inside jax.shard_map, where "
            "the array is one shard's block; here no mesh axis is manual. Outside "
            f"shard_map drop `{name}`: under jit the global array already gives "
            "every element its global index (on an Explicit mesh the result keeps "
            "the input's sharding)."
        )
    entries = spec_entries(shard_spec, ndim)
    seen = set()
    for axis in (a for entry in entries for a in entry):
        if axis not in types:
            raise ValueError(
                f"`{name}`={shard_spec} names mesh axis {axis!r}, which the mesh "
                f"lacks; its axes are {tuple(types)}."
            )
        if types[axis] != AxisType.Manual:
            raise ValueError(
                f"`{name}`={shard_spec} names mesh axis {axis!r}, which is not "
                f"manual in the enclosing jax.shard_map (manual axes: "
                f"{tuple(manual)}); name only the axes that shard_map splits."
            )
        if axis in seen:
            raise ValueError(f"`{name}`={shard_spec} uses mesh axis {axis!r} twice.")
        seen.add(axis)
    return entries


def check_out_sharding(out_sharding, ndim: int, name: str = "out_sharding"):
    """Check an output sharding: None, a NamedSharding, or a PartitionSpec of
    the mesh set with ``jax.set_mesh`` (returned as a NamedSharding).

    Raises:
      TypeError: another type.
      ValueError: a spec with more entries than axes; a PartitionSpec without a
        mesh set.
    """
    if out_sharding is None:
        return None
    if isinstance(out_sharding, NamedSharding) and not out_sharding.mesh.axis_names:
        return None  # the sharding of an array outside any mesh
    if isinstance(out_sharding, PartitionSpec):
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.axis_names:
            raise ValueError(
                f"`{name}`={out_sharding} is a PartitionSpec but no mesh is set; "
                "call it under `with jax.set_mesh(mesh):` or pass "
                "`jax.sharding.NamedSharding(mesh, spec)`."
            )
        out_sharding = NamedSharding(mesh, out_sharding)
    if not isinstance(out_sharding, NamedSharding):
        raise TypeError(
            f"`{name}` must be None, a jax.sharding.NamedSharding or a "
            f"PartitionSpec; got {type(out_sharding).__name__} {out_sharding!r}."
        )
    _check_spec_rank(out_sharding.spec, ndim, name)
    return out_sharding


# --------------------------------------------------------------------------------
# Module field checks (used by the module core, jaxreg/_layers.py, and by the pure
# functions that take the same arguments). Added with the module core; each takes
# the value and the argument name and returns the value normalized.
# --------------------------------------------------------------------------------


def check_str(value, name: str) -> str:
    """A string (e.g. the name of an rng collection)."""
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a str; got {type(value).__name__} {short_repr(value)}."
        )
    return value


def check_callable(value, name: str, *, example: str = "jax.nn.relu"):
    """None or a callable (e.g. an activation applied to a layer's output)."""
    if value is not None and not callable(value):
        raise TypeError(
            f"`{name}` must be None or a callable such as `{example}`; got "
            f"{type(value).__name__} {short_repr(value)}."
        )
    return value


def check_flag(value, name: str):
    """A boolean flag such as ``deterministic``, as Flax reads it, or a traced one.

    Accepted: Python and NumPy bools, the integers 0 and 1, and 0-d boolean or
    integer arrays. A concrete value is returned as a Python bool (it selects the
    code path when tracing); a traced 0-d array is returned as a traced boolean,
    and the caller chooses the path at run time (``jax.lax.cond``).

    Raises:
      TypeError: a string, a float, a non-scalar array or any other object.
      ValueError: an integer other than 0 or 1.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        integral = value.dtype == bool or jnp.issubdtype(value.dtype, jnp.integer)
        if value.ndim != 0 or not integral:
            raise TypeError(
                f"`{name}` must be a bool or a 0-d boolean array; got an array of "
                f"shape {value.shape} and dtype {value.dtype}."
            )
        if not is_static(value):  # traced: the path is chosen at run time
            return value if value.dtype == bool else value != 0
        value = value.item()
        if isinstance(value, bool):
            return value
    if isinstance(value, (int, np.integer)):
        if value not in (0, 1):
            raise ValueError(
                f"`{name}` must be True or False (or 1 / 0); got {name}={int(value)}."
            )
        return bool(value)
    raise TypeError(
        f"`{name}` must be a bool (True or False; NumPy bools, 0 / 1 and 0-d boolean "
        f"arrays work too, traced ones included); got {type(value).__name__} "
        f"{short_repr(value)}."
    )


def float32_or_wider(*dtypes) -> np.dtype:
    """The widest floating dtype among ``dtypes`` and float32 (float64 stays).

    What ``jnp.promote_types(dtype, jnp.float32)`` gives for floating and integer
    dtypes, computed without implicit promotion, so it also holds under
    ``jax_numpy_dtype_promotion="strict"`` (Equinox's test convention), where
    promoting bfloat16 with float32 is an error.
    """
    widest = np.dtype(np.float32)
    for dtype in dtypes:
        dtype = jnp.dtype(dtype)
        if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize > widest.itemsize:
            widest = dtype
    return widest
