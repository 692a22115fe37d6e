"""End to end: jaxreg.equinox modules in a trained model, and gradients through them.

Equinox's test conventions (conftest.py) hold in every test here: strict dtype
promotion and rank promotion "raise".
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _helpers import digits
from _modules import KEY

import jaxreg
import jaxreg.equinox as je


class MLP(eqx.Module):
    noise: je.GaussianNoise
    hidden: je.DropConnectDense
    act_reg: je.ActivityRegularization
    drop: je.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.noise = je.GaussianNoise(0.1)
        self.hidden = je.DropConnectDense(
            64, 256, rate=0.2, activation=jax.nn.relu, key=k1
        )
        self.act_reg = je.ActivityRegularization(l2=1e-5)
        self.drop = je.Dropout(0.3)
        self.out = eqx.nn.Linear(256, 10, key=k2)

    def __call__(self, x, *, key=None):
        k1, k2, k3 = (None,) * 3 if key is None else jax.random.split(key, 3)
        h = self.hidden(self.noise(x, key=k1), key=k2)
        h, penalty = self.act_reg(h)
        return self.out(self.drop(h, key=k3)), penalty


def test_mlp_with_jaxreg_modules_and_chain_learns_digits():
    x_tr, y_tr, x_te, y_te = digits()
    model = MLP(KEY)
    tx = optax.chain(
        jaxreg.add_l2(1e-4),
        optax.adam(2e-3),
        jaxreg.max_norm_constraint(3.0, mask=jaxreg.mask_by_ndim),
    )
    opt = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, opt, xb, yb, key):
        def loss_fn(model):
            keys = jax.random.split(key, xb.shape[0])
            logits, penalties = jax.vmap(lambda x, k: model(x, key=k))(xb, keys)
            data = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return data + penalties.sum()

        grads = eqx.filter_grad(loss_fn)(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        # optax itself is not written for strict promotion (`decay**count`).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt = tx.update(grads, opt, params)
        return eqx.apply_updates(model, updates), opt

    rng = np.random.default_rng(0)
    n = (x_tr.shape[0] // 64) * 64
    keys = iter(jax.random.split(jax.random.key(1), 30 * (n // 64)))
    for _ in range(30):
        for idx in rng.permutation(x_tr.shape[0])[:n].reshape(-1, 64):
            model, opt = train_step(model, opt, x_tr[idx], y_tr[idx], next(keys))
    infer = eqx.nn.inference_mode(model)
    logits, _ = jax.vmap(infer)(x_te)
    accuracy = float((logits.argmax(-1) == y_te).mean())
    assert accuracy >= 0.95, accuracy
    # The rates stayed Python floats and the max-norm constraint holds.
    assert (model.drop.p, model.hidden.rate, model.noise.stddev) == (0.3, 0.2, 0.1)
    for weight in (model.hidden.weight, model.out.weight):
        assert float(jnp.linalg.norm(weight, axis=0).max()) <= 3.0 + 1e-5


def test_gradients_through_modules_check_grads():
    from jax.test_util import check_grads

    key = jax.random.key(6)
    x = jax.random.normal(jax.random.key(1), (5,))
    for module in (je.Dropout(0.3), je.GaussianDropout(0.2), je.AlphaDropout(0.1)):
        check_grads(
            lambda x, m=module: m(x, key=key), (x,), order=2, modes=["fwd", "rev"]
        )
    layer = je.DropConnectDense(5, 4, rate=0.3, activation=jnp.tanh, key=KEY)
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def g(params, x):
        return eqx.combine(params, static)(x, key=key)

    check_grads(g, (params, x), order=1, modes=["fwd", "rev"])
