"""Guide, page 7: data- and tensor-parallel training with jaxreg, checked against
single-device training.

An MLP 40-512-512-10 is trained on MNIST-1D with inverted dropout (rate 0.3) after
both hidden layers, coupled L2 (:func:`jaxreg.add_l2`, 1e-4, kernels only), Adam
1e-3 and a max-norm constraint (:func:`jaxreg.max_norm_constraint`, 3.0, kernels
only), batch 128, on 8 simulated CPU devices:

* ``single``: every array on one device (the reference);
* meshes ``data x model`` of ``8x1`` (pure data parallel), ``4x2``, ``2x4`` and
  ``1x8`` (pure tensor parallel). The batch is sharded over ``data``; the first
  kernel column-wise and the second row-wise over ``model`` (Megatron style), the
  output layer replicated. One ``jax.jit`` with ``NamedSharding`` inputs; XLA
  inserts the collectives.

The script reports, for every mesh, whether the dropout masks equal the
single-device masks bit for bit, the collectives in the compiled step and in a
compiled dropout call, and the largest difference of the per-step loss and of the
final parameters from the single-device run. Writes ``sharding.png`` and
``sharding.json`` to ``--out``.

The script sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` itself
(before importing jax) unless a device count is already in ``XLA_FLAGS``, and
raises XLA:CPU collective time-outs (see the comment at the top). Run
``python -m examples.sharded_training`` (6 runs of 600 steps) or ``--quick``.
"""

from __future__ import annotations

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# The 8 simulated devices are threads that meet at every collective; on a busy
# machine one can be descheduled for longer than XLA's default 40 s limit, which
# aborts the process. Raise the limit (it only matters when something is stuck).
if "xla_cpu_collective_call_terminate_timeout_seconds" not in _flags:
    _flags += (
        " --xla_cpu_collective_call_terminate_timeout_seconds=3600"
        " --xla_cpu_collective_call_warn_stuck_timeout_seconds=600"
        " --xla_cpu_collective_timeout_seconds=3600"
    )
os.environ["XLA_FLAGS"] = _flags.strip()

import re  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxreg  # noqa: E402
from examples.helpers import cli, datasets, models, reporting  # noqa: E402

RATE = 0.3
# Megatron-style layout: column-parallel, then row-parallel, output replicated.
PARAM_SPECS = [
    {"w": P(None, "model"), "b": P("model")},
    {"w": P("model", None), "b": P()},
    {"w": P(), "b": P()},
]
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")


def make_optimizer():
    kernels = jaxreg.mask_by_ndim
    return optax.chain(
        jaxreg.add_l2(1e-4, mask=kernels),
        optax.adam(1e-3),
        jaxreg.max_norm_constraint(3.0, mask=kernels),
    )


def hidden_dropout(key, h, i):
    return jaxreg.dropout(key, h, RATE)


def loss_fn(params, x, y, key):
    logits = models.mlp_apply(params, x, key=key, hidden=hidden_dropout)
    return models.cross_entropy(logits, y)


def train_step(state, x, y):
    params, opt_state, key = state
    key, sub = jax.random.split(key)
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, sub)
    updates, opt_state = make_optimizer().update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), loss


def count_collectives(hlo: str) -> dict[str, int]:
    """Number of each collective op in compiled HLO text."""
    return {
        op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo))
        for op in COLLECTIVES
        if re.search(rf"\b{op}(?:-start)?\(", hlo)
    }


def run(mesh_shape, params0, batches, key, data):
    """Train from ``params0``; ``mesh_shape=None`` puts everything on one device."""
    opt = make_optimizer()
    if mesh_shape is None:
        dev = jax.devices()[0]
        put_params = put_x = put_y = put_rep = lambda a: jax.device_put(a, dev)  # noqa: E731
        mesh = None
    else:
        # Auto axes: shardings of the inputs propagate through jit (GSPMD).
        mesh = jax.make_mesh(
            mesh_shape,
            ("data", "model"),
            axis_types=(AxisType.Auto, AxisType.Auto),
            devices=jax.devices()[: np.prod(mesh_shape)],
        )
        shard = [
            {k: NamedSharding(mesh, s) for k, s in layer.items()}
            for layer in PARAM_SPECS
        ]

        def put_params(p):
            return jax.device_put(p, shard)

        def put_x(a):
            return jax.device_put(a, NamedSharding(mesh, P("data", None)))

        def put_y(a):
            return jax.device_put(a, NamedSharding(mesh, P("data")))

        def put_rep(a):
            return jax.device_put(a, NamedSharding(mesh, P()))

    params = put_params(params0)
    # The optimizer state follows the parameters' shardings (jit propagates them).
    opt_state = jax.jit(opt.init)(params)
    state = (params, opt_state, put_rep(key))
    step = jax.jit(train_step)
    xtr, ytr = data.x_train, data.y_train
    compiled = step.lower(state, put_x(xtr[batches[0]]), put_y(ytr[batches[0]]))
    collectives = count_collectives(compiled.compile().as_text())
    losses = []
    for idx in batches:
        state, loss = step(state, put_x(xtr[idx]), put_y(ytr[idx]))
        # Synchronous steps: with more simulated devices than cores, letting
        # several sharded programs be in flight at once can stall XLA:CPU's
        # collective rendezvous on a busy machine.
        losses.append(float(loss))
    losses = np.asarray(losses)
    params = jax.device_get(state[0])

    # The dropout masks of the first hidden layer of the first step, and the
    # collectives in a compiled dropout call on the sharded activations.
    h = jax.nn.relu(
        put_x(xtr[batches[0]]) @ put_params(params0)[0]["w"]
        + put_params(params0)[0]["b"]
    )
    drop = jax.jit(lambda k, h: jaxreg.dropout(k, h, RATE))
    mask = np.asarray(drop(put_rep(key), h) != 0)
    drop_collectives = count_collectives(
        drop.lower(put_rep(key), h).compile().as_text()
    )
    return {
        "losses": losses,
        "params": params,
        "mask": mask,
        "step_collectives": collectives,
        "dropout_collectives": drop_collectives,
        "h_sharding": str(getattr(h, "sharding", None)),
    }


def main(argv=None) -> dict:
    ap = cli.parser(__doc__, cache=cli.TEMP_CACHE, seeds=False, epochs=False)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    meshes = [(8, 1), (4, 2), (2, 4), (1, 8)]
    if args.quick:
        args.steps = 3
        meshes = [(4, 2)]
    if len(jax.devices()) < 8:
        raise SystemExit(
            f"need 8 devices, found {len(jax.devices())}: run this script in a fresh "
            "process (it sets XLA_FLAGS before importing jax)"
        )
    out = reporting.output_dir(args.out)
    data = datasets.load_mnist1d(args.cache)
    sizes, batch = (40, 512, 512, 10), 128
    params0 = models.init_mlp(args.seed, sizes)
    key = jax.random.key(args.seed, impl="threefry2x32")
    rng = np.random.default_rng([args.seed, 1])
    n = len(data.y_train)
    per_epoch = n // batch
    batches = np.concatenate(
        [
            rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch)
            for _ in range(-(-args.steps // per_epoch))
        ]
    )[: args.steps]

    ref = run(None, params0, batches, key, data)
    print(f"single device: final loss {ref['losses'][-10:].mean():.4f}", flush=True)
    # The yardstick for "the same trajectory": the same run on one device with
    # another dropout key (same initialisation, same minibatches).
    other = run(None, params0, batches, jax.random.fold_in(key, 1), data)
    d_other = np.abs(other["losses"] - ref["losses"])
    print(
        f"single device, other dropout key: max abs loss diff {d_other.max():.1e}, "
        f"mean over the last 100 steps {d_other[-100:].mean():.1e}",
        flush=True,
    )
    results = {"single": ref, "single, other dropout key": other}
    rows = []
    for shape in meshes:
        r = run(shape, params0, batches, key, data)
        name = f"{shape[0]}x{shape[1]}"
        results[name] = r
        dloss = np.abs(r["losses"] - ref["losses"])
        dparam = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(
                jax.tree.leaves(r["params"]),
                jax.tree.leaves(ref["params"]),
                strict=True,
            )
        )
        r["max_abs_dloss"] = float(dloss.max())
        r["max_rel_dloss"] = float((dloss / np.abs(ref["losses"])).max())
        r["max_abs_dparam"] = dparam
        r["loss_bitwise_equal_steps"] = int(np.sum(dloss == 0))
        r["first_step_dloss"] = float(dloss[0])
        r["masks_equal"] = bool(np.array_equal(r["mask"], ref["mask"]))
        r["mean_abs_dloss_last_100"] = float(dloss[-100:].mean())
        rows.append(
            {
                "mesh data x model": name,
                "dropout masks == single": str(r["masks_equal"]),
                "collectives in dropout": str(r["dropout_collectives"] or "none"),
                "collectives in train step": ", ".join(
                    f"{k} x{v}" for k, v in r["step_collectives"].items()
                ),
                "step-1 abs loss diff": f"{dloss[0]:.1e}",
                "max abs loss diff": f"{dloss.max():.1e}",
                "mean abs loss diff, last 100": f"{dloss[-100:].mean():.1e}",
                "max rel loss diff": f"{r['max_rel_dloss']:.1e}",
                "bitwise-equal steps": f"{r['loss_bitwise_equal_steps']}/{args.steps}",
                "max abs param diff": f"{dparam:.1e}",
            }
        )
        print(rows[-1], flush=True)
    rows.append(
        {
            "mesh data x model": "1 device, other dropout key",
            "dropout masks == single": "False",
            "collectives in dropout": "",
            "collectives in train step": "",
            "step-1 abs loss diff": f"{d_other[0]:.1e}",
            "max abs loss diff": f"{d_other.max():.1e}",
            "mean abs loss diff, last 100": f"{d_other[-100:].mean():.1e}",
            "max rel loss diff": f"{(d_other / np.abs(ref['losses'])).max():.1e}",
            "bitwise-equal steps": f"{int(np.sum(d_other == 0))}/{args.steps}",
            "max abs param diff": f"{max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(other['params']), jax.tree.leaves(ref['params']), strict=True)):.1e}",
        }
    )
    table = reporting.markdown_table(rows)
    print(table)

    plt = reporting.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    steps = np.arange(1, args.steps + 1)
    axes[0].plot(steps, ref["losses"], color="k", lw=1.5, label="single device")
    for i, shape in enumerate(meshes):
        name = f"{shape[0]}x{shape[1]}"
        r = results[name]
        axes[0].plot(steps, r["losses"], color=f"C{i}", lw=0.8, ls="--", label=name)
        d = np.abs(r["losses"] - ref["losses"])
        axes[1].semilogy(steps, np.maximum(d, 1e-10), color=f"C{i}", lw=0.8, label=name)
    axes[1].semilogy(
        steps,
        np.maximum(d_other, 1e-10),
        color="0.6",
        lw=0.8,
        label="1 device, other dropout key",
    )
    axes[0].set_title("training loss (train mode, per step)", fontsize=9)
    axes[1].set_title(
        "|loss(mesh) - loss(single device)| (1e-10 plotted for exact 0)", fontsize=9
    )
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    summary = {
        "table": table,
        "results": {
            k: {
                kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv)
                for kk, vv in v.items()
                if kk not in ("params", "mask")
            }
            for k, v in results.items()
        },
    }
    title = (
        "MLP 40-512-512-10, dropout 0.3 + L2 + Adam + max-norm, 8 simulated CPU "
        f"devices, seed {args.seed}"
    )
    path = reporting.save_figure(fig, out, "sharding", title, summary=summary)
    print(f"figure: {path}")
    return summary


if __name__ == "__main__":
    main()
