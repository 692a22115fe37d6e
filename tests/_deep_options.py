"""Cases shared by the adapter tests of the new module options: feature alpha
dropout (``AlphaDropout(broadcast_dims=...)``) and DropBlock's
``couple_channels`` / ``gamma_scale``. Each case: (id, module name, fields, the
pure function of ``(key, x)`` the module must equal)."""

import jax
import numpy as np

import jaxreg

X = jax.random.normal(jax.random.key(42), (4, 6, 6, 3))


def _case(case_id, name, pure, **fields):
    """One case: the module ``name`` with ``fields`` equals ``pure(key, x, rate,
    **other fields)``."""
    options = {k: v for k, v in fields.items() if k != "rate"}
    return (case_id, name, fields, lambda k, x: pure(k, x, fields["rate"], **options))


CASES = [
    _case(
        "Alpha-feature",
        "AlphaDropout",
        jaxreg.alpha_dropout,
        rate=0.3,
        broadcast_dims=(1, 2),
    ),
    _case(
        "DropBlock-coupled",
        "DropBlock",
        jaxreg.dropblock,
        rate=0.2,
        block_size=3,
        couple_channels=True,
        gamma_scale=0.5,
    ),
]
IDS = [c[0] for c in CASES]

BAD = [
    ("AlphaDropout", {"rate": 0.1, "broadcast_dims": 1.5}, TypeError, "broadcast_dims"),
    ("DropBlock", {"rate": 0.1, "couple_channels": 1}, TypeError, "couple_channels"),
    ("DropBlock", {"rate": 0.1, "gamma_scale": -1.0}, ValueError, "gamma_scale"),
]
BAD_IDS = [f"{c[0]}-{next(iter(c[1].keys() - {'rate'}))}" for c in BAD]


def assert_channel_maps_shared(name, y):
    """The drop pattern the option promises: alpha dropout constant over H, W
    per (example, channel); coupled DropBlock identical across channels."""
    y = np.asarray(y)
    if name == "AlphaDropout":
        values, counts = np.unique(y, return_counts=True)
        dropped = y == values[counts.argmax()]  # the one value dropped units take
        assert counts.max() >= y.shape[1] * y.shape[2]
        assert np.array_equal(dropped, np.broadcast_to(dropped[:, :1, :1], y.shape))
    else:
        dropped = y == 0
        assert np.array_equal(dropped, np.broadcast_to(dropped[..., :1], y.shape))
