"""jaxreg: functional regularization for JAX.

Every technique is a pure function of explicit inputs (a PRNG key first, then the
array or parameter pytree, then the rate or strength), safe under ``jit``, ``vmap``,
``grad``, ``scan`` and sharding. The same maths is exposed as optax gradient
transformations (:mod:`jaxreg.transforms`) and as Flax and Equinox modules
(:mod:`jaxreg.linen`, :mod:`jaxreg.nnx`, :mod:`jaxreg.equinox`; imported on demand,
``import jaxreg`` imports neither Flax nor Equinox).
"""

# Public submodules whose functions are used by module path (jaxreg.losses.*,
# jaxreg.schedules.*); their names are not re-exported at the top level.
from jaxreg import losses as losses
from jaxreg import schedules as schedules

# The mask sampler.
from jaxreg._sampler import keep_mask, keep_probability

# Input-side regularizers (augmentations).
from jaxreg.augment import cutmix, cutout, mixup, random_shift

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

# Constraints (projections).
from jaxreg.constraints import max_norm, min_max_norm, non_neg, unit_norm

# Keys per layer and call site (scan over layers without split_rngs).
from jaxreg.keys import derive_key, layer_keys

# Penalties and parameter masks.
from jaxreg.penalties import (
    elastic_net,
    group_lasso,
    l1,
    l2,
    mask_by_ndim,
    mask_by_path,
    orthogonal,
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

# Early stopping.
from jaxreg.stopping import EarlyStopping, EarlyStoppingState, early_stopping

# Token-level regularizers (PatchDropout).
from jaxreg.tokens import patch_dropout

# optax transformations.
from jaxreg.transforms import (
    PenaltyState,
    ProxState,
    add_l1,
    add_l2,
    add_penalty,
    elastic_net_prox,
    group_lasso_prox,
    l1_prox,
    max_norm_constraint,
    min_max_norm_constraint,
    non_neg_constraint,
    project,
    unit_norm_constraint,
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
    # augment
    "cutmix",
    "cutout",
    "mixup",
    "random_shift",
    # weight_dropout
    "dropconnect",
    "dropconnect_dense",
    "dropconnect_inference",
    "dropconnect_moments",
    "dropconnect_params",
    # uncertainty
    "mc_dropout_predict",
    # penalties
    "elastic_net",
    "group_lasso",
    "l1",
    "l2",
    "mask_by_ndim",
    "mask_by_path",
    "orthogonal",
    # constraints
    "max_norm",
    "min_max_norm",
    "non_neg",
    "unit_norm",
    # transforms
    "PenaltyState",
    "ProxState",
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
    "unit_norm_constraint",
    # tokens
    "patch_dropout",
    # keys
    "derive_key",
    "layer_keys",
    # stopping
    "EarlyStopping",
    "EarlyStoppingState",
    "early_stopping",
]
