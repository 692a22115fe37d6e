"""End to end: jaxreg.linen modules in a trained model, and gradients through them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from _helpers import digits
from _modules import KEY

import jaxreg
import jaxreg.linen as jl


def test_mlp_with_jaxreg_modules_and_chain_learns_digits():
    x_tr, y_tr, x_te, y_te = digits()

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            det = not train
            x = jl.GaussianNoise(0.1, deterministic=det)(x)
            x = jl.DropConnectDense(
                256, rate=0.2, activation=nn.relu, deterministic=det
            )(x)
            x = jl.ActivityRegularization(l2=1e-5)(x)
            x = jl.Dropout(0.3, deterministic=det)(x)
            return nn.Dense(10)(x)

    model = MLP()
    params = model.init(KEY, x_tr[:1], train=False)["params"]
    tx = optax.chain(
        jaxreg.add_l2(1e-4),
        optax.adam(2e-3),
        jaxreg.max_norm_constraint(3.0, mask=jaxreg.mask_by_ndim),
    )
    opt = tx.init(params)

    def loss_fn(p, xb, yb, key):
        logits, state = model.apply(
            {"params": p}, xb, train=True, rngs={"dropout": key}, mutable=["losses"]
        )
        data = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return data + sum(jax.tree.leaves(state["losses"]))

    @jax.jit
    def epoch(p, opt, key):
        perm_key, key = jax.random.split(key)
        n = (x_tr.shape[0] // 64) * 64
        idx = jax.random.permutation(perm_key, x_tr.shape[0])[:n].reshape(-1, 64)

        def step(carry, batch):
            p, opt, key = carry
            key, sub = jax.random.split(key)
            g = jax.grad(loss_fn)(p, x_tr[batch], y_tr[batch], sub)
            u, opt = tx.update(g, opt, p)
            return (optax.apply_updates(p, u), opt, key), None

        (p, opt, _), _ = jax.lax.scan(step, (p, opt, key), idx)
        return p, opt

    for key in jax.random.split(jax.random.key(1), 30):
        params, opt = epoch(params, opt, key)
    logits = model.apply({"params": params}, x_te, train=False)
    accuracy = float((logits.argmax(-1) == y_te).mean())
    assert accuracy >= 0.95, accuracy
    # The max-norm constraint holds on every kernel column.
    for kernel in (params["DropConnectDense_0"]["kernel"], params["Dense_0"]["kernel"]):
        assert float(jnp.linalg.norm(kernel, axis=0).max()) <= 3.0 + 1e-5


def test_gradients_through_modules_check_grads():
    from jax.test_util import check_grads

    key = jax.random.key(6)
    x = jax.random.normal(jax.random.key(1), (3, 5))
    for module in (jl.Dropout(0.3), jl.GaussianDropout(0.2), jl.AlphaDropout(0.1)):
        f = lambda x, m=module: m.apply({}, x, deterministic=False, rng=key)  # noqa: E731
        check_grads(f, (x,), order=2, modes=["fwd", "rev"])
    layer = jl.DropConnectDense(4, rate=0.3, activation=jnp.tanh, per_example=True)
    v = layer.init(KEY, x, deterministic=True)

    def g(kernel, x):
        params = {"params": {"kernel": kernel, "bias": v["params"]["bias"]}}
        return layer.apply(params, x, deterministic=False, rng=key)

    check_grads(g, (v["params"]["kernel"], x), order=1, modes=["fwd", "rev"])
