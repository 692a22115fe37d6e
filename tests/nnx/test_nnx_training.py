"""End to end: jaxreg.nnx modules in a trained model, and gradients through them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _helpers import digits
from _modules import flat_paths
from flax import nnx

import jaxreg
import jaxreg.nnx as jn


def test_mlp_with_jaxreg_modules_and_chain_learns_digits():
    x_tr, y_tr, x_te, y_te = digits()

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.noise = jn.GaussianNoise(0.1, rngs=rngs)
            self.hidden = jn.DropConnectDense(
                64, 256, rate=0.2, activation=nnx.relu, rngs=rngs
            )
            self.act_reg = jn.ActivityRegularization(l2=1e-5)
            self.drop = jn.Dropout(0.3, rngs=rngs)
            self.out = nnx.Linear(256, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(self.act_reg(self.hidden(self.noise(x)))))

    model = MLP(nnx.Rngs(0))
    tx = optax.chain(
        jaxreg.add_l2(1e-4),
        optax.adam(2e-3),
        jaxreg.max_norm_constraint(3.0, mask=jaxreg.mask_by_ndim),
    )
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    paths_before = flat_paths(model)

    @nnx.jit
    def train_step(model, opt, xb, yb):
        def loss_fn(model):
            logits, losses = nnx.capture(model, jn.Loss)(xb)
            data = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return data + sum(jax.tree.leaves(losses))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    n = (x_tr.shape[0] // 64) * 64
    model.train()
    for _ in range(30):
        for idx in rng.permutation(x_tr.shape[0])[:n].reshape(-1, 64):
            train_step(model, opt, x_tr[idx], y_tr[idx])
    model.eval()
    accuracy = float((model(x_te).argmax(-1) == y_te).mean())
    assert accuracy >= 0.95, accuracy
    assert flat_paths(model) == paths_before  # checkpoint structure is stable
    for kernel in (model.hidden.kernel[...], model.out.kernel[...]):
        assert float(jnp.linalg.norm(kernel, axis=0).max()) <= 3.0 + 1e-5


def test_gradients_through_modules_check_grads():
    from jax.test_util import check_grads

    key = jax.random.key(6)
    x = jax.random.normal(jax.random.key(1), (3, 5))
    for module in (jn.Dropout(0.3), jn.GaussianDropout(0.2), jn.AlphaDropout(0.1)):
        check_grads(
            lambda x, m=module: m(x, rngs=key), (x,), order=2, modes=["fwd", "rev"]
        )
    layer = jn.DropConnectDense(5, 4, rate=0.3, activation=jnp.tanh, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def g(params, x):
        return nnx.merge(graphdef, params, rest)(x, rngs=key)

    check_grads(g, (params, x), order=1, modes=["fwd", "rev"])
