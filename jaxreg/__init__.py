"""jaxreg: functional regularization for JAX.

Every technique is a pure function of explicit inputs (a PRNG key first, then the
array or parameter pytree, then the rate or strength), safe under ``jit``, ``vmap``,
``grad``, ``scan`` and sharding. The same maths is exposed as optax gradient
transformations (:mod:`jaxreg.transforms`) and as Flax and Equinox modules
(:mod:`jaxreg.linen`, :mod:`jaxreg.nnx`, :mod:`jaxreg.equinox`; imported on demand,
``import jaxreg`` imports neither Flax nor Equinox).
"""

# Each module below re-exports its ``__all__`` through a star import, and those lists
# make up the package's ``__all__``: a public name is listed once, by its definition.
from jaxreg import (
    _sampler,
    augment,
    bayesian,
    constraints,
    keys,
    penalties,
    stochastic,
    stopping,
    tokens,
    transforms,
    uncertainty,
    weight_dropout,
)

# Public submodules whose functions are used by module path (jaxreg.attention.*,
# jaxreg.losses.*, jaxreg.schedules.*); their names are not re-exported at the top
# level.
from jaxreg import attention as attention
from jaxreg import losses as losses
from jaxreg import schedules as schedules

# The mask sampler.
from jaxreg._sampler import *

# Input-side regularizers (augmentations).
from jaxreg.augment import *

# Learned-rate and Bayesian dropout (concrete dropout, sparse variational dropout).
from jaxreg.bayesian import *

# Constraints (projections).
from jaxreg.constraints import *

# Keys per layer and call site (scan over layers without split_rngs).
from jaxreg.keys import *

# Penalties and parameter masks.
from jaxreg.penalties import *

# The dropout family on activations.
from jaxreg.stochastic import *

# Early stopping.
from jaxreg.stopping import *

# Token-level regularizers (PatchDropout).
from jaxreg.tokens import *

# optax transformations.
from jaxreg.transforms import *

# MC-dropout uncertainty.
from jaxreg.uncertainty import *

# DropConnect (weight_dropout).
from jaxreg.weight_dropout import *

__version__ = "0.1.0"

# The star-imported modules, in the order their names take in ``__all__``.
_REEXPORTED = (
    _sampler,
    stochastic,
    bayesian,
    augment,
    weight_dropout,
    uncertainty,
    penalties,
    constraints,
    transforms,
    tokens,
    keys,
    stopping,
)
__all__ = [name for module in _REEXPORTED for name in module.__all__]
