"""Argument checks shared by the whole library.

Python numbers are validated eagerly, before tracing, and every error names the
argument and the value it got. Traced values (schedules under ``jit``,
``optax.inject_hyperparams``) cannot be inspected in Python and pass through; the
public docstrings say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

__all__ = [
    "check_axis",
    "check_broadcast_dims",
    "check_float_array",
    "check_nonnegative",
    "check_out_sharding",
    "check_positive",
    "check_rate",
    "check_shard_spec",
    "is_static",
    "spec_entries",
    "static_value",
]


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
            f"got {type(value).__name__} {value!r}."
        )
    shape = np.shape(value)
    if shape != ():
        raise ValueError(f"`{name}` must be a scalar; got an array of shape {shape}.")
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"`{name}` must be a real number; got dtype {dtype}.")


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


def check_nonnegative(value, name: str):
    """Check a scalar that must be >= 0 (a concrete one is returned as float)."""
    _check_scalar(value, name)
    v = static_value(value)
    if v is None:
        return value
    if math.isnan(v) or v < 0:
        raise ValueError(f"`{name}` must be >= 0; got {name}={v!r}.")
    return v


def check_positive(value, name: str):
    """Check a scalar that must be > 0 (a concrete one is returned as float)."""
    _check_scalar(value, name)
    v = static_value(value)
    if v is None:
        return value
    if math.isnan(v) or v <= 0:
        raise ValueError(f"`{name}` must be > 0; got {name}={v!r}.")
    return v


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
        text = repr(x)
        if len(text) > 60:
            text = text[:57] + "..."
        raise TypeError(
            f"`{name}` must be an array of floating dtype (a jax.Array, numpy array "
            f"or Python float); got {type(x).__name__} {text}. Convert it first, "
            f"e.g. `{name}=jnp.asarray({name}, jnp.float32)`."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating dtype (float32, bfloat16, float16, ...); "
            f"got dtype {dtype}. Cast it first, e.g. `{name}.astype(jnp.float32)`."
        )
    return jnp.asarray(x)


def check_axis(axis, ndim: int, name: str = "axis") -> int:
    """Normalize one axis index for an array of rank ``ndim``."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int; got {type(axis).__name__} {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`{name}`={axis} is out of range for an array of rank {ndim} "
            f"(valid: {-ndim}..{ndim - 1})."
        )
    return int(axis) % ndim


def check_broadcast_dims(
    broadcast_dims: Sequence[int] | int, ndim: int, name: str = "broadcast_dims"
) -> tuple[int, ...]:
    """Normalize ``broadcast_dims`` to sorted non-negative axes, each checked."""
    if isinstance(broadcast_dims, (int, np.integer)) and not isinstance(
        broadcast_dims, bool
    ):
        broadcast_dims = (broadcast_dims,)
    try:
        dims = tuple(broadcast_dims)
    except TypeError as err:
        raise TypeError(
            f"`{name}` must be a sequence of ints; got {broadcast_dims!r}."
        ) from err
    out = set()
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"`{name}` must contain ints; got {d!r} in {dims!r}.")
        if not -ndim <= d < ndim:
            raise ValueError(
                f"`{name}`={dims!r} has axis {d}, out of range for an input of rank "
                f"{ndim} (valid: {-ndim}..{ndim - 1})."
            )
        out.add(int(d) % ndim)
    return tuple(sorted(out))


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


def check_int(value, name: str, *, minimum: int | None = None) -> int:
    """A Python (or NumPy) integer that fixes a shape or a count, returned as int.

    Raises:
      TypeError: for bools, floats and anything that is not an integer.
      ValueError: if ``value < minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a Python int; got {type(value).__name__} {value!r}."
        )
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {name}={int(value)}.")
    return int(value)


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


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices``, else ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        names = [repr(c) for c in choices]
        if len(names) == 2:
            listed = " or ".join(names)
        else:
            listed = "one of " + ", ".join(names)
        raise ValueError(f"`{name}` must be {listed}; got {name}={short_repr(value)}.")
    return value


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


def check_threshold(value, name: str = "threshold") -> float:
    """A real Python or NumPy number that is not NaN (infinities are allowed)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"`{name}` must be a Python number; got {type(value).__name__} "
            f"{short_repr(value)}."
        )
    if value != value:
        raise ValueError(f"`{name}` must not be NaN; got {name}={value!r}.")
    return float(value)


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
