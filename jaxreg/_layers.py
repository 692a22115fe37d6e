"""The module logic of jaxreg's layers, written once and free of any framework.

:mod:`jaxreg.linen`, :mod:`jaxreg.nnx` and :mod:`jaxreg.equinox` are adapters: each
holds the fields the way its framework does (dataclass fields, NNX attributes,
Equinox pytree fields), finds the PRNG key (``make_rng``, an ``nnx.RngStream``, a
``key`` argument) and reports loss terms (``sow``, ``nnx.capture``, a returned
value). Everything else about a module lives here, as plain functions of explicit
values:

* the fields of every module and their checks (run at construction):
  :data:`DROPOUT` and the other :class:`Layer` specs of the dropout family,
  :data:`DROPCONNECT`, :data:`CONCRETE`, :data:`SPARSE_VD`, :data:`ACTIVITY`,
  applied by :func:`check_fields`;
* resolving ``deterministic``: :func:`jaxreg._checks.check_flag` accepts what Flax
  accepts plus traced flags; the adapter hands every core function one
  :class:`Call` (the module's name, the flag, the key source), and :func:`run`
  takes the Python path for a concrete flag and ``jax.lax.cond`` between both
  paths for a traced one;
* when a call draws a key (:func:`needs_key`), DropConnect's inference modes,
  zoneout's carry and output mapping, and the loss terms modules report;
* what every adapter's docstring says about a module (a :class:`Doc`: what it
  does, its fields, the paper), composed with the adapter's own summary, notes
  and examples by :func:`document` (each adapter's :class:`Docs` adds how it
  describes its flags and keys).

Adding a module to the dropout family is one :class:`Layer` here (its pure
function, its fields' checks and their text) plus one small class in each
adapter: a summary line, an example, and the fields as the framework declares
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxreg.bayesian as _bayesian
import jaxreg.penalties as _penalties
import jaxreg.stochastic as _stochastic
import jaxreg.weight_dropout as _weight_dropout
from jaxreg._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_flag,
    check_int,
    check_nonnegative,
    check_positive,
    check_rate,
    check_str,
    check_threshold,
    float32_or_wider,
    short_repr,
    static_value,
)
from jaxreg._keys import as_key
from jaxreg._sampler import activation_name

Check = Callable[[Any, str], Any]

#: The modules every adapter (linen, nnx, equinox) defines, by class name.
MODULES = (
    "ActivityRegularization",
    "AlphaDropout",
    "ConcreteDropout",
    "DropBlock",
    "DropConnectDense",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "SparseVariationalDense",
    "SpatialDropout",
    "ZoneoutCell",
)


def owner(module) -> str:
    """The qualified class name errors are prefixed with (``jaxreg.nnx.Dropout``)."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_fields(
    where: str, checks: Mapping[str, Check], values: Mapping[str, Any]
) -> dict[str, Any]:
    """``{name: checks[name](values[name], name)}``: every field checked, normalized.

    Errors keep their type and are prefixed with ``where`` (the module's name).
    """
    return {
        name: check_field(where, check, values[name], name)
        for name, check in checks.items()
    }


def check_field(where: str, check: Check, value, name: str):
    """``check(value, name)``, errors prefixed with ``where`` (types kept)."""
    try:
        return check(value, name)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None


def check_key(where: str, key, name: str):
    """A call's PRNG key as :func:`jaxreg._keys.as_key` checks it, errors prefixed."""
    return check_field(where, lambda k, n: as_key(k, name=n), key, name)


# --------------------------------------------------------------------------------
# Field checks (each ``check(value, name) -> normalized value``).
# --------------------------------------------------------------------------------


def rate_below_one_field(value, name):
    """A drop probability in ``[0, 1)`` (Gaussian dropout's variance is finite)."""
    return check_rate(value, name, allow_one=False)


def open_rate_field(value, name):
    """A drop probability strictly inside ``(0, 1)`` (its logit is learned)."""
    value = check_rate(value, name)
    if not 0.0 < float(value) < 1.0:
        raise ValueError(
            f"`{name}` is the initial drop probability and must lie strictly between "
            f"0 and 1 (its logit is learned); got {name}={value!r}."
        )
    return value


def rate_tree_field(value, name):
    """One rate, or a pytree of rates (one per leaf of a recurrent carry)."""
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves:
        raise ValueError(
            f"`{name}` must be a rate or a pytree of rates; got {short_repr(value)}."
        )
    for leaf in leaves:
        check_rate(leaf, name)
    return value


def broadcast_dims_field(value, name) -> tuple[int, ...]:
    """Axes sharing one mask value: an int or a sequence of ints, as a tuple.

    Their range depends on the input's rank, checked at call time.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"`{name}` must be a sequence of ints; got {type(value).__name__} "
            f"{short_repr(value)}."
        )
    dims = tuple(value)
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise TypeError(
                f"`{name}` must contain ints; got {short_repr(d)} in {short_repr(dims)}."
            )
    return tuple(int(d) for d in dims)


def channel_axis_field(value, name) -> int:
    """A channel axis of a rank 3 to 5 input that is not the batch axis 0."""
    axis = check_int(value, name)
    if axis == 0 or not -4 <= axis <= 4:
        raise ValueError(
            f"`{name}` must name a channel axis of a rank 3, 4 or 5 input other than "
            f"the batch axis 0 (e.g. -1 or 1); got {name}={axis}."
        )
    return axis


def activation_field(value, name):
    """A fusable dropout activation (None, a name or the matching function)."""
    activation_name(value)
    return value


def positive_int_field(value, name) -> int:
    """A size, a block side or a number of samples: a Python or NumPy int ``>= 1``."""
    return check_int(value, name, minimum=1)


def drop_path_mode_field(value, name) -> str:
    """``"row"`` (per example) or ``"batch"`` (the whole batch)."""
    return check_choice(value, name, ("row", "batch"))


def finite_field(value, name) -> float:
    """A finite real Python or NumPy number (e.g. an initial log variance)."""
    value = check_threshold(value, name)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite; got {name}={value!r}.")
    return value


def flag_field(value, name):
    """None (decided at call time) or a flag :func:`check_flag` accepts."""
    return None if value is None else check_flag(value, name)


def precision_field(value, name):
    """None, a ``jax.lax.Precision`` or its name (per-operand pairs unsupported)."""
    if value is None or isinstance(value, jax.lax.Precision):
        return value
    if isinstance(value, str):
        try:
            jax.lax.Precision(value)
        except ValueError:
            pass
        else:
            return value
    raise ValueError(
        f"`{name}` must be None, a `jax.lax.Precision` or its name such as "
        f"'highest'; got {name}={short_repr(value)} (per-operand precision pairs "
        "are not supported)."
    )


def matmul_precision(precision):
    """A context applying ``precision`` to the matmuls of the pure functions."""
    if precision is None:
        return contextlib.nullcontext()
    if isinstance(precision, jax.lax.Precision):
        precision = precision.name.lower()
    return jax.default_matmul_precision(precision)


#: The fields every stochastic module of the Flax adapters shares.
STOCHASTIC = {"deterministic": flag_field, "rng_collection": check_str}


# --------------------------------------------------------------------------------
# Docstrings: what every adapter says about a module, written once.
# --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Doc:
    """What every adapter's docstring says about a module, written once.

    Attributes:
      text: Google style, as the docstrings it goes into: a paragraph about the
        module, an ``Attributes`` section describing the fields the adapters
        share, and ``References`` with the paper.
      inference: what the inference path does, completing "if True, ...".
    """

    text: str
    inference: str = "return the input unchanged"

    def sections(self) -> dict[str, list[str]]:
        """``{"": about, "Attributes": lines, "References": lines}``, dedented."""
        return _sections(inspect.cleandoc(self.text).splitlines())

    def renamed(self, old: str, new: str) -> Doc:
        """The same text for a field ``old`` called ``new`` (Equinox's ``p``):
        its entry and every ``old`` literal in the text are renamed."""
        text = self.text.replace(f"``{old}``", f"``{new}``")
        return dataclasses.replace(self, text=text.replace(f" {old}: ", f" {new}: "))


#: The section headers of Google-style docstrings used here.
_SECTIONS = ("Args:", "Attributes:", "Raises:", "Returns:", "Examples:", "References:")


def _sections(lines: list[str]) -> dict[str, list[str]]:
    """A docstring's lines by section (``""``: the text before the first)."""
    out, name = {"": []}, ""
    for line in lines:
        if line in _SECTIONS:
            name = line[:-1]
            out[name] = []
        else:
            out[name].append(line)
    return {k: v for k, v in out.items() if any(line.strip() for line in v)}


def _entries(lines: list[str]) -> dict[str, list[str]]:
    """A section's entries (``name: text`` at the least indentation) by name."""
    entries: dict[str, list[str]] = {}
    indent = min(
        (len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0
    )
    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) == indent:
            name = line.split(":", 1)[0].strip()
            entries[name] = []
        if line.strip():
            entries[name].append("  " + line[indent:])
    return entries


def _fill(text: str) -> str:
    return textwrap.fill(
        text,
        80,
        initial_indent="  ",
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def document(
    doc: Doc,
    heading: str,
    texts: Mapping[str, str | None],
    mark_keyword_only: bool = False,
):
    """Class decorator: ``cls.__doc__`` composed from ``doc`` and the class's own.

    The class's docstring holds what only its adapter says: the summary line,
    prose, and sections such as Raises and Examples. The result is that summary,
    the shared paragraph of ``doc``, the class's prose, a ``heading`` section
    (``"Attributes"`` or ``"Args"``) describing every parameter of
    ``cls.__init__`` in order, the class's sections, then the shared
    References.

    Args:
      doc: the shared text.
      heading: the title of the parameters' section.
      texts: the adapter's descriptions by parameter name (its flags, keys and
        framework-specific fields, one line each), used before ``doc``'s; None
        leaves a parameter out (linen's ``parent`` and ``name``). ``{inference}``
        in a text is replaced by ``doc.inference``.
      mark_keyword_only: append "Keyword only." to keyword-only parameters.

    Raises:
      TypeError: a parameter with no description (a docstring would be
        incomplete), at import.
    """

    def write(cls):
        if cls.__doc__ is None:  # python -OO
            return cls
        summary, *own = inspect.cleandoc(cls.__doc__).splitlines()
        own, shared = _sections(own), doc.sections()
        fields = _entries(shared.get("Attributes", []))
        entries = []
        for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            text = texts.get(param.name, "")
            if text is None:
                continue
            if text:
                text = text.replace("{inference}", doc.inference)
                lines = _fill(f"{param.name}: {text}").splitlines()
            elif param.name in fields:
                lines = fields[param.name]
            else:
                raise TypeError(f"{cls.__qualname__}: `{param.name}` is undocumented.")
            if mark_keyword_only and param.kind is param.KEYWORD_ONLY:
                lines = [*lines[:-1], lines[-1] + " Keyword only."]
            entries.extend(lines)
        parts = [
            summary,
            "\n".join(shared.get("", [])),
            "\n".join(own.pop("", [])),
            f"{heading}:\n" + "\n".join(entries),
            *(f"{name}:\n" + "\n".join(lines) for name, lines in own.items()),
            "References:\n" + "\n".join(shared["References"]),
        ]
        cls.__doc__ = "\n\n".join(part.strip("\n") for part in parts) + "\n"
        return cls

    return write


@dataclasses.dataclass(frozen=True)
class Docs:
    """How one adapter writes its modules' docstrings (with :func:`document`).

    Attributes:
      heading: the title of the parameters' section (``"Attributes"``, ``"Args"``).
      texts: the adapter's descriptions of its flags and keys by name.
      mark_keyword_only: append "Keyword only." to keyword-only parameters.
    """

    heading: str
    texts: Mapping[str, str | None]
    mark_keyword_only: bool = False

    def module(self, doc: Doc, **texts: str):
        """Class decorator: the docstring from ``doc``, the adapter's texts and
        ``texts`` (the module's own parameters)."""
        texts = {**self.texts, **texts}
        return document(doc, self.heading, texts, self.mark_keyword_only)

    def family(self, layer: Layer):
        """Class decorator: the dropout-family module of ``layer``, which sets its
        ``LAYER`` and writes its docstring."""

        def define(cls):
            cls.LAYER = layer
            return self.module(layer.doc)(cls)

        return define


# --------------------------------------------------------------------------------
# Choosing the path: the key a call needs, and concrete or traced flags.
# --------------------------------------------------------------------------------


def needs_key(rate, *, key_free_at_one: bool = True) -> bool:
    """False when a concrete ``rate`` makes the output key-independent.

    A rate of 0 returns the input; a rate of 1 returns zeros when
    ``key_free_at_one`` (not for Gaussian noise, whose rate 1 is a real draw).
    """
    value = static_value(rate)
    if value is None:
        return True
    return not (value == 0.0 or (key_free_at_one and value == 1.0))


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a module, as its adapter resolved it: every core function
    below takes it.

    Attributes:
      where: the module's name, for errors (:func:`owner`).
      deterministic: a Python bool, or a traced boolean (from
        :func:`jaxreg._checks.check_flag`).
      draw_key: returns the call's key; called at most once, only when a path
        that may run needs it (so no key is drawn at inference or at rate 0).
    """

    where: str
    deterministic: Any
    draw_key: Callable[[], Any]


def run(call: Call, key_needed: Callable[[bool], bool], forward):
    """``forward(det, key)`` for the call's flag.

    Args:
      call: the flag and the key source.
      key_needed: ``key_needed(det)`` says whether the path ``det`` uses a key.
      forward: ``forward(det, key)`` with a Python bool ``det``; pure (no module
        state is touched inside it, so it may run inside ``jax.lax.cond``).

    Returns:
      ``forward``'s output; for a traced flag, ``jax.lax.cond`` selects between
      ``forward(True, ...)`` and ``forward(False, ...)`` at run time (both are
      traced, the key is drawn once before).
    """
    deterministic, draw_key = call.deterministic, call.draw_key
    if isinstance(deterministic, bool):
        return forward(deterministic, draw_key() if key_needed(deterministic) else None)
    infer, train = key_needed(True), key_needed(False)
    key = draw_key() if infer or train else None
    return jax.lax.cond(
        deterministic,
        lambda: forward(True, key if infer else None),
        lambda: forward(False, key if train else None),
    )


# --------------------------------------------------------------------------------
# The dropout family on activations.
# --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    """One module of the dropout family: its pure function, fields and text.

    Attributes:
      fn: the pure function, ``fn(key, inputs, rate, *, deterministic, **options)``.
      fields: every field the function takes, the rate first, with its check;
        the others are passed to ``fn`` by keyword.
      doc: what every adapter's docstring says about the module.
      key_free_at_one: a concrete rate of 1 needs no key (the output is zeros).
    """

    fn: Callable
    fields: Mapping[str, Check]
    doc: Doc
    key_free_at_one: bool = True

    @property
    def rate(self) -> str:
        """The name of the rate field (``rate``, ``p`` or ``stddev``)."""
        return next(iter(self.fields))

    def renamed(self, rate: str) -> Layer:
        """The same layer with its rate field called ``rate`` (Equinox's ``p``)."""
        first, *rest = self.fields.items()
        return dataclasses.replace(
            self,
            fields={rate: first[1], **dict(rest)},
            doc=self.doc.renamed(first[0], rate),
        )

    def apply(self, values: Mapping[str, Any], inputs, call: Call):
        """The module's output for checked field ``values`` and a resolved call."""
        rate = values[self.rate]
        options = {name: values[name] for name in self.fields if name != self.rate}
        free = not needs_key(rate, key_free_at_one=self.key_free_at_one)

        def forward(det, key):
            return self.fn(key, inputs, rate, deterministic=det, **options)

        return run(call, lambda det: not (det or free), forward)


DROPOUT = Layer(
    _stochastic.dropout,
    {
        "rate": check_rate,
        "broadcast_dims": broadcast_dims_field,
        "inverted": check_bool,
        "activation": activation_field,
    },
    Doc("""
    The mask comes from :func:`jaxreg.dropout`: the kept units are divided by the
    keep probability the sampler realises, so ``E[output] == inputs`` exactly. A
    rate of 0 or the inference path returns the input and a rate of 1 returns
    zeros with finite gradients; neither draws a key. With ``activation`` set,
    ``f(inputs)`` takes the place of ``inputs`` throughout, computed fused with
    the mask.

    Attributes:
      rate: the dropout probability (not the keep rate!), in ``[0, 1]``.
      broadcast_dims: dimensions that share one mask value (e.g. the time axis for
        variational RNN dropout).
      inverted: if False use classic dropout (the kept units unscaled when
        training, the input times the keep probability at inference), see
        :func:`jaxreg.dropout`.
      activation: None, or an elementwise activation the module applies to its
        input *before* dropping it, fused with the dropout: ``"tanh"``,
        ``"sigmoid"``, ``"relu"``, ``"elu"``, ``"softplus"`` or the matching
        function (``jax.nn.tanh``, ``jnp.tanh``, ...). The output is that of the
        unfused ``Dropout(...)(f(inputs))`` (``f(inputs)`` at inference, times
        the keep probability if ``inverted=False``), but the reason to fuse is memory:
        under autodiff the layer keeps only its output for the backward pass,
        where ``Dense -> f -> Dropout`` also keeps ``f``'s output, one more
        activation-sized buffer per layer. See the ``activation`` argument of
        :func:`jaxreg.dropout`.

    References:
      Srivastava et al. "Dropout: A Simple Way to Prevent Neural Networks from
      Overfitting." JMLR 15, 2014. https://jmlr.org/papers/v15/srivastava14a.html
    """),
)
SPATIAL_DROPOUT = Layer(
    _stochastic.spatial_dropout,
    {"rate": check_rate, "channel_axis": channel_axis_field},
    Doc("""
    One keep decision per (example, channel), shared over all spatial positions;
    see :func:`jaxreg.spatial_dropout`. Axis 0 is the batch.

    Attributes:
      rate: probability of dropping a channel, in ``[0, 1]``.
      channel_axis: the channel axis (``-1`` for NWC/NHWC/NDHWC, ``1`` for
        channels-first); not 0 (the batch), within ``-4..4``.

    References:
      Tompson et al. "Efficient Object Localization Using Convolutional
      Networks." CVPR 2015. https://arxiv.org/abs/1411.4280
    """),
)
GAUSSIAN_DROPOUT = Layer(
    _stochastic.gaussian_dropout,
    {"rate": rate_below_one_field},
    Doc("""
    Training: ``inputs * (1 + sqrt(rate / (1 - rate)) * eps)``, ``eps ~ N(0,
    1)``; inference returns the inputs. See :func:`jaxreg.gaussian_dropout`.

    Attributes:
      rate: drop-equivalent rate in ``[0, 1)``.

    References:
      Srivastava et al. 2014, section 10 ("Multiplicative Gaussian Noise").
      https://jmlr.org/papers/v15/srivastava14a.html
    """),
    key_free_at_one=False,
)
GAUSSIAN_NOISE = Layer(
    _stochastic.gaussian_noise,
    {"stddev": check_nonnegative},
    Doc("""
    See :func:`jaxreg.gaussian_noise`.

    Attributes:
      stddev: noise standard deviation, ``>= 0``.

    References:
      Bishop. "Training with Noise is Equivalent to Tikhonov Regularization."
      Neural Computation 7(1), 1995. https://doi.org/10.1162/neco.1995.7.1.108
    """),
    key_free_at_one=False,
)
ALPHA_DROPOUT = Layer(
    _stochastic.alpha_dropout,
    {"rate": check_rate, "broadcast_dims": broadcast_dims_field},
    Doc("""
    Dropped units are set to the SELU saturation value and an affine correction
    keeps zero mean and unit variance; see :func:`jaxreg.alpha_dropout`.

    Attributes:
      rate: drop probability in ``[0, 1]``.
      broadcast_dims: axes sharing one keep decision; the spatial axes make it
        feature alpha dropout (PyTorch's ``FeatureAlphaDropout``).

    References:
      Klambauer et al. "Self-Normalizing Neural Networks." NeurIPS 2017.
      https://arxiv.org/abs/1706.02515
    """),
)
DROP_PATH = Layer(
    _stochastic.drop_path,
    {"rate": check_rate, "mode": drop_path_mode_field},
    Doc("""
    Apply it to the branch before adding the shortcut, ``x + drop_path(branch(x))``;
    see :func:`jaxreg.drop_path`.

    Attributes:
      rate: probability of dropping the branch, in ``[0, 1]``.
      mode: ``"row"`` (each row of axis 0: per example, as in timm) or
        ``"batch"`` (the whole input, as in Huang et al. 2016).

    References:
      Huang et al. "Deep Networks with Stochastic Depth." ECCV 2016.
      https://arxiv.org/abs/1603.09382
    """),
)
DROPBLOCK = Layer(
    _stochastic.dropblock,
    {
        "rate": check_rate,
        "block_size": positive_int_field,
        "couple_channels": check_bool,
        "gamma_scale": check_nonnegative,
    },
    Doc("""
    Each position is dropped with probability ``rate``; kept units are rescaled so
    ``E[output] == inputs``. The input is a batch ``(N, H, W, C)``; see
    :func:`jaxreg.dropblock`.

    Attributes:
      rate: per-position drop probability, in ``[0, 1]``.
      block_size: side of the square blocks, an int ``>= 1`` (NumPy ints too).
      couple_channels: one block mask shared by all channels of an example
        (default: one per channel, as timm and the TensorFlow reference code).
      gamma_scale: factor ``>= 0`` on the seed rate (timm's ``gamma_scale``).

    References:
      Ghiasi, Lin, Le. "DropBlock: A regularization method for convolutional
      networks." NeurIPS 2018. https://arxiv.org/abs/1810.12890
    """),
)


# --------------------------------------------------------------------------------
# DropConnect.
# --------------------------------------------------------------------------------

INFERENCE_MODES = ("mean", "moments", "mc")

#: DropConnectDense's fields besides the dense layer's sizes and initializers.
DROPCONNECT = {
    "rate": check_rate,
    "per_example": check_bool,
    "inference": lambda value, name: check_choice(value, name, INFERENCE_MODES),
    "activation": check_callable,
    "num_samples": positive_int_field,
    "precision": precision_field,
}

#: How the dense layers (DropConnect, sparse variational dropout) describe the
#: fields of a dense layer, in :class:`Doc` text.
_DENSE_DOC = """
      features: number of output features, an int ``>= 1``.
      in_features: number of input features, an int ``>= 1``.
      out_features: number of output features, an int ``>= 1``.
      use_bias: whether to add a bias.
      dtype: computation dtype (inferred from the inputs and parameters if None).
      param_dtype: dtype of the parameters.
      precision: matmul precision (None, a ``jax.lax.Precision`` or its name).
      bias_init: bias initializer."""

DROPCONNECT_DOC = Doc(
    f"""
    While training each weight is dropped with probability ``rate`` and the kept
    ones are scaled by ``1 / (1 - rate)`` (:func:`jaxreg.dropconnect_dense`), so
    the expected pre-activation is the dense layer's; ``activation`` (default:
    none) is applied after the layer.

    Attributes:{_DENSE_DOC}
      kernel_init: kernel initializer.
      rate: probability of dropping a weight, in ``[0, 1]``.
      per_example: an independent weight mask per example of a batched input (as
        in the paper), or one mask for the batch.
      inference: the inference rule. ``"mean"``: ``activation(x @ kernel +
        bias)`` (mean-field; no key). ``"moments"``: the rule of Wan et al. 2013,
        each pre-activation approximated by ``N(mean, var)``
        (:func:`jaxreg.dropconnect_moments`), ``num_samples`` samples pushed
        through ``activation`` and averaged (:func:`jaxreg.dropconnect_inference`;
        needs a key). ``"mc"``: one sampled mask as in training (Monte-Carlo
        DropConnect: average several calls, e.g. with
        :func:`jaxreg.mc_dropout_predict`; needs a key).
      activation: elementwise activation applied to the output, or None; it
        matters for the moments rule.
      num_samples: Gaussian samples per unit for the moments rule, an int ``>= 1``.

    References:
      Wan, Zeiler, Zhang, LeCun, Fergus. "Regularization of Neural Networks using
      DropConnect." ICML 2013. https://proceedings.mlr.press/v28/wan13.html
    """,
    inference="apply the inference rule",
)


def _identity(u):
    return u


def dropconnect(
    x,
    kernel,
    bias,
    call: Call,
    *,
    rate,
    per_example: bool,
    inference: str,
    activation,
    num_samples: int,
    precision,
):
    """DropConnectDense's output, for the checked :data:`DROPCONNECT` fields.

    Training, and inference with ``inference="mc"``, apply one sampled weight mask
    (:func:`jaxreg.dropconnect_dense`); ``"mean"`` inference is the dense layer
    and ``"moments"`` the Gaussian rule of :func:`jaxreg.dropconnect_inference`.
    ``activation`` follows the layer. At a concrete rate of 0 or 1 every path is
    exact without a key.
    """
    act = activation if activation is not None else _identity
    free = not needs_key(rate)

    def forward(det, key):
        with matmul_precision(precision):
            if not det or inference == "mc":
                u = _weight_dropout.dropconnect_dense(
                    key, x, kernel, rate, bias=bias, per_example=per_example
                )
                return act(u)
            if inference == "mean" or free:
                u = _weight_dropout.dropconnect_dense(
                    None, x, kernel, rate, bias=bias, deterministic=True
                )
                return act(u)
            return _weight_dropout.dropconnect_inference(
                key, x, kernel, rate, act, bias=bias, num_samples=num_samples
            )

    def key_needed(det):
        return not free and (not det or inference != "mean")

    return run(call, key_needed, forward)


# --------------------------------------------------------------------------------
# Recurrent: zoneout.
# --------------------------------------------------------------------------------

ZONEOUT_DOC = Doc(
    """
    Every leaf of the cell's new carry goes through :func:`jaxreg.zoneout`: when
    training each unit keeps its previous value with probability ``rate``; at
    inference the carry is the expectation ``(1 - rate) * h_new + rate * h_prev``.
    One key per call, split into one key per carry leaf.

    Attributes:
      cell: the wrapped cell.
      rate: probability of keeping the previous value: one rate, or a pytree with
        the carry's structure.

    References:
      Krueger et al. "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
      Activations." ICLR 2017. https://arxiv.org/abs/1606.01305
    """,
    inference="use the expectation",
)


def _is_leaf(tree) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(tree))


def zoneout(rate, carry, new_carry, outputs, call: Call) -> tuple[Any, Any]:
    """Zoneout on every leaf of a cell's new carry, and the outputs that show it.

    Args:
      rate: one rate (for every leaf) or a pytree with the carry's structure.
      carry: the previous carry.
      new_carry: the cell's new carry.
      outputs: the cell's outputs (None for cells that return only the carry).
      call: the flag and the key (leaf ``i``, in ``jax.tree_util`` order, uses
        ``jax.random.split(key, n)[i]``); its ``where`` prefixes errors.

    Returns:
      ``(zoned carry, outputs)``. The output mapping is explicit: an output leaf
      that *is* a new-carry leaf (every Flax cell returns its hidden state ``h``
      both as a carry leaf and as the output) is replaced by that leaf after
      zoneout; other outputs pass through unchanged.
    """
    new_leaves, treedef = jax.tree_util.tree_flatten(new_carry)
    old_leaves = treedef.flatten_up_to(carry)
    if _is_leaf(rate):
        rates = [rate] * len(new_leaves)
    else:
        try:
            rates = treedef.flatten_up_to(rate)
        except (ValueError, TypeError):
            rates = None
        # A carry that is one array takes one rate, not a tuple of them.
        if rates is None or not all(_is_leaf(r) for r in rates):
            raise ValueError(
                f"{call.where}: `rate` must be one rate or a pytree with the "
                f"structure of the cell's carry {treedef}; got "
                f"rate={short_repr(rate)}."
            )
    out_leaves, out_def = jax.tree_util.tree_flatten(outputs)
    # Output leaf i shows new-carry leaf carry_index[i] (None: not a carry leaf).
    carry_index = [
        next((j for j, leaf in enumerate(new_leaves) if out is leaf), None)
        for out in out_leaves
    ]
    free = not any(needs_key(r) for r in rates)

    def forward(det, key):
        keys = [None] * len(rates) if key is None else jax.random.split(key, len(rates))
        return [
            _stochastic.zoneout(k, h_prev, h_new, r, deterministic=det)
            for k, h_prev, h_new, r in zip(
                keys, old_leaves, new_leaves, rates, strict=True
            )
        ]

    zoned = run(call, lambda det: not (det or free), forward)
    shown = [
        y if j is None else zoned[j]
        for y, j in zip(out_leaves, carry_index, strict=True)
    ]
    return (
        jax.tree_util.tree_unflatten(treedef, zoned),
        jax.tree_util.tree_unflatten(out_def, shown),
    )


# --------------------------------------------------------------------------------
# Loss terms: activity regularization, concrete dropout, sparse variational dropout.
# --------------------------------------------------------------------------------

ACTIVITY = {"l1": check_nonnegative, "l2": check_nonnegative}
ACTIVITY_DOC = Doc("""
    The penalty ``l1 * sum(|x|) + l2 * sum(x**2)`` is taken over the whole input
    (as ``keras.layers.ActivityRegularization`` in Keras 3; tf.keras 2 divided it
    by the batch size). Gradients flow through the penalty into the activations.

    Attributes:
      l1: factor of the L1 activity penalty, ``>= 0``.
      l2: factor of the squared-L2 activity penalty, ``>= 0``.

    References:
      Keras API, ``ActivityRegularization`` layer.
      https://keras.io/api/layers/regularization_layers/activity_regularization/
    """)


def activity_penalty(values: Mapping[str, Any], inputs) -> jax.Array:
    """Keras' activity penalty ``l1 * sum|x| + l2 * sum(x**2)`` (float32 or wider).

    Built on :func:`jaxreg.l1` (``sum|x|``) and :func:`jaxreg.l2`
    (``0.5 * sum(x**2)``, hence the factor 2).
    """
    l1, l2 = values["l1"], values["l2"]
    terms = []
    if static_value(l1) != 0.0:
        terms.append(l1 * _penalties.l1(inputs))
    if static_value(l2) != 0.0:
        terms.append(2.0 * l2 * _penalties.l2(inputs))
    if not terms:
        dtype = float32_or_wider(jnp.result_type(inputs))
        return jnp.zeros((), dtype)
    return sum(terms[1:], terms[0])


CONCRETE = {
    "weight_regularizer": check_nonnegative,
    "dropout_regularizer": check_nonnegative,
    "init_rate": open_rate_field,
    "temperature": check_positive,
}
CONCRETE_DOC = Doc(
    """
    The drop probability is the trainable logit ``logit_p`` (``p =
    sigmoid(logit_p)``, initialised at ``init_rate``); the relaxed mask comes from
    :func:`jaxreg.concrete_dropout`. With ``layer`` the module computes
    ``layer(dropped inputs)`` and the regularizer of
    :func:`jaxreg.concrete_dropout_regularizer`: the weight term on the layer's
    parameters plus the entropy term with ``input_dim = inputs.shape[-1]``;
    without ``layer``, the dropped inputs and the entropy term only. With ``N``
    training points and prior length-scale ``l``, the paper uses
    ``weight_regularizer = l**2 / N`` and ``dropout_regularizer = 2 / N``.

    Attributes:
      layer: the layer the dropped inputs feed (its parameters get the weight
        term), or None.
      weight_regularizer: ``>= 0`` (paper: ``l**2 / N``).
      dropout_regularizer: ``>= 0`` (paper: ``2 / N``).
      init_rate: initial drop probability, in ``(0, 1)``.
      temperature: relaxation temperature, ``> 0`` (paper: 0.1).

    References:
      Gal, Hron, Kendall. "Concrete Dropout." NeurIPS 2017.
      https://arxiv.org/abs/1705.07832
    """,
    inference="skip the dropout (the output is ``layer(inputs)``)",
)


def concrete_logit(init_rate: float) -> float:
    """The initial ``logit_p`` of a concrete dropout layer."""
    return math.log(init_rate) - math.log1p(-init_rate)


def concrete_layer(
    values, inputs, logit_p, call: Call, layer=None, params=None
) -> tuple[jax.Array, jax.Array]:
    """Concrete dropout's ``(output, regularizer)`` for the :data:`CONCRETE` fields.

    The inputs are dropped with the learned rate (unchanged at inference), then
    fed to ``layer`` if it is given. The regularizer is
    :func:`jaxreg.concrete_dropout_regularizer` with ``input_dim =
    inputs.shape[-1]``, its weight term on the leaves of ``params(layer)`` (the
    layer's parameters as its framework holds them, read after the call), the
    entropy term only without a layer.
    """

    def forward(det, key):
        return _bayesian.concrete_dropout(
            key, inputs, logit_p, temperature=values["temperature"], deterministic=det
        )

    y = run(call, lambda det: not det, forward)
    leaves = []
    if layer is not None:
        y = layer(y)
        leaves = jax.tree_util.tree_leaves(params(layer))
    penalty = _bayesian.concrete_dropout_regularizer(
        leaves if leaves else jnp.zeros(()),
        logit_p,
        input_dim=int(jnp.shape(inputs)[-1]),
        weight_regularizer=values["weight_regularizer"],
        dropout_regularizer=values["dropout_regularizer"],
    )
    return y, penalty


SPARSE_VD = {"kl_weight": check_nonnegative, "threshold": check_threshold}
SPARSE_VD_DOC = Doc(
    f"""
    Parameters: the weight means ``theta`` (the kernel), ``log_sigma2`` (per-weight
    log variance, initialised at ``log_sigma2_init``) and the bias. Training uses
    the local reparameterisation trick (:func:`jaxreg.sparse_vd_dense`); inference
    uses the weight means with every weight of ``log alpha > threshold`` pruned.
    The loss term is ``kl_weight * sparse_vd_kl(log_alpha)``: set ``kl_weight = 1
    / N`` for ``N`` training points (the ELBO per example), possibly warmed up
    from 0. Report sparsity with :func:`jaxreg.sparse_vd_pruned_fraction` of
    :func:`jaxreg.sparse_vd_log_alpha`.

    Attributes:{_DENSE_DOC}
      kernel_init: initializer of the weight means.
      log_sigma2_init: initial log variance of every weight (finite).
      threshold: log-alpha pruning threshold at inference (paper: 3).
      kl_weight: factor of the KL term, ``>= 0`` (``1 / N``).

    References:
      Molchanov, Ashukha, Vetrov. "Variational Dropout Sparsifies Deep Neural
      Networks." ICML 2017. https://arxiv.org/abs/1701.05369
    """,
    inference="use the pruned weight means",
)


def sparse_vd_kl(values, kernel, log_sigma2) -> jax.Array:
    """``kl_weight * sparse_vd_kl(log_alpha)``: the loss term the layer reports."""
    log_alpha = _bayesian.sparse_vd_log_alpha(kernel, log_sigma2)
    return values["kl_weight"] * _bayesian.sparse_vd_kl(log_alpha)


def sparse_vd_dense(values, x, kernel, log_sigma2, bias, call: Call) -> jax.Array:
    """The layer's output: local reparameterisation, or the pruned mean at inference."""

    def forward(det, key):
        return _bayesian.sparse_vd_dense(
            key,
            x,
            kernel,
            log_sigma2,
            bias=bias,
            threshold=values["threshold"],
            deterministic=det,
        )

    return run(call, lambda det: not det, forward)
