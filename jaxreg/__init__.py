"""jaxreg: functional regularization for JAX.

Every technique is a pure function of explicit inputs (a PRNG key first, then the
array or parameter pytree, then the rate or strength), safe under ``jit``, ``vmap``,
``grad``, ``scan`` and sharding. The same maths is exposed as optax gradient
transformations (:mod:`jaxreg.transforms`) and as Flax modules (:mod:`jaxreg.linen`,
:mod:`jaxreg.nnx`; imported on demand, ``import jaxreg`` does not import Flax).
"""

# The mask sampler.
from jaxreg._sampler import keep_mask, keep_probability

# Learned-rate and Bayesian dropout (concrete dropout, sparse variational dropout).
from jaxreg.bayesian import (
    concrete_dropout,
    concrete_dropout_regularizer,
    sparse_vd_dense,
    sparse_vd_kl,
    sparse_vd_log_alpha,
    sparse_vd_prune,
    sparse_vd_pruned_fraction,
)

# The dropout family on activations.
from jaxreg.stochastic import (
    alpha_dropout,
    drop_path,
    dropblock,
    dropout,
    gaussian_dropout,
    gaussian_noise,
    spatial_dropout,
    zoneout,
)

# DropConnect (weight_dropout) and MC-dropout uncertainty.
from jaxreg.uncertainty import mc_dropout_predict
from jaxreg.weight_dropout import (
    dropconnect,
    dropconnect_dense,
    dropconnect_inference,
    dropconnect_moments,
    dropconnect_params,
)

__version__ = "0.1.0"

__all__ = [
    # _sampler
    "keep_mask",
    "keep_probability",
    # stochastic
    "alpha_dropout",
    "drop_path",
    "dropblock",
    "dropout",
    "gaussian_dropout",
    "gaussian_noise",
    "spatial_dropout",
    "zoneout",
    # bayesian
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "sparse_vd_dense",
    "sparse_vd_kl",
    "sparse_vd_log_alpha",
    "sparse_vd_prune",
    "sparse_vd_pruned_fraction",
    # weight_dropout
    "dropconnect",
    "dropconnect_dense",
    "dropconnect_inference",
    "dropconnect_moments",
    "dropconnect_params",
    # uncertainty
    "mc_dropout_predict",
]
