"""Worker for tests/test_sharding.py: runs on 8 simulated CPU devices.

Run as a script (``python tests/_sharding_worker.py``); the parent sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before this process imports
jax. Importing this module (pytest's doctest collection does) runs nothing and
imports nothing heavy.

Every randomised function of jaxreg is run on sharded inputs and compared with the
same function on unsharded inputs (committed to one device). To keep the number
of compilations (hence the run time) small, the functions are bundled: one
``jax.jit`` of all of them per configuration (mode, mesh, axis types, spec):

* ``jit``: the forward pass (Auto and Explicit meshes);
* ``grad``: the VJP of every differentiable function with respect to its data
  input (Explicit meshes);
* ``eager``: a few functions called without ``jit`` on sharded arrays;
* ``communicating``: the functions that must move data between devices for
  some layouts (see ``COMMUNICATING``), compiled apart from the others;
* ``shard_map``: the ``shard_spec=`` forms inside ``jax.shard_map`` against the
  global ``jit`` form (and, for a shard_map over some of the mesh axes, a
  control program that only doubles its inputs: JAX itself gathers the other
  axes at the boundary of such a shard_map, which jaxreg must not add to).

For each function the worker prints one JSON line: the largest absolute
difference from the unsharded result and the tolerance that applies to it (0,
i.e. bit for bit, for elementwise maths; see ``TOLERANCE``), whether the
output's type has the input's sharding, and the collectives of the compiled
bundle's HLO (a bundle with any is compiled again function by function to say
which function has them).
"""

import functools
import json
import os
import re
import sys
import time

MESHES = {"8": (8,), "2x4": (2, 4), "4x2": (4, 2)}

# Per spec name, the PartitionSpec entries of each input (mesh axes "i", "j";
# on the 1-D mesh "j" is read as "i"). x2 is (batch, features); x4 is NHWC
# (features = channels); xm (the values of x2) and w, the (in, out) kernel, are
# the inputs of the matmul functions: xm split over the batch only and w
# column-wise where the features are, so that no split axis is contracted.
SPECS = {
    "batch": {"x2": ("i", None), "x4": ("i",), "xm": ("i",), "w": ()},
    "features": {
        "x2": (None, "j"),
        "x4": (None, None, None, "j"),
        "xm": (),
        "w": (None, "j"),
    },
    "both": {
        "x2": ("i", "j"),
        "x4": ("i", None, None, "j"),
        "xm": ("i",),
        "w": (None, "j"),
    },
    # the spatial axes of the feature maps split (DropBlock's blocks and the
    # shifts of random_shift cross devices)
    "spatial": {"x2": (("i", "j"), None), "x4": (None, "i", "j"), "xm": (), "w": ()},
}
# (mode, mesh, axis types) -> the specs run
CONFIGS = {
    ("jit", "8", "Explicit"): ["batch", "features"],
    ("jit", "2x4", "Explicit"): ["both", "batch", "features", "spatial"],
    ("jit", "4x2", "Explicit"): ["both", "batch", "features"],
    ("jit", "8", "Auto"): ["features"],
    ("jit", "2x4", "Auto"): ["both"],
    ("jit", "4x2", "Auto"): ["batch"],
    ("grad", "8", "Explicit"): ["features"],
    ("grad", "2x4", "Explicit"): ["spatial", "both"],
    ("grad", "4x2", "Explicit"): ["batch"],
    ("communicating", "2x4", "Explicit"): ["both", "spatial"],
    ("eager", "2x4", "Explicit"): ["both"],
    ("shard_map", "8", "Auto"): ["batch"],
    ("shard_map", "2x4", "Explicit"): ["both", "partial"],
    ("shard_map", "2x4", "Auto"): ["spatial"],
    ("shard_map", "4x2", "Auto"): ["features"],
}

# Every function runs in these configurations; the others run only CORE (the
# mask layouts), to keep the compilations few and small.
FULL = {
    ("jit", "8", "Explicit", "batch"),
    ("jit", "2x4", "Explicit", "both"),
    ("jit", "4x2", "Auto", "batch"),
    ("grad", "2x4", "Explicit", "spatial"),
    ("communicating", "2x4", "Explicit", "both"),
}
CORE = [
    "dropout",
    "dropout_broadcast_batch",
    "dropout_broadcast_features",
    "keep_mask",
    "keep_mask_broadcast",
    "drop_path",
    "zoneout",
    "spatial_dropout",
    "dropblock",
    "cutout",
    "random_shift",
    "dropconnect_dense_per_example",
]

# Functions whose result is not bit-exact across layouts, with the reason.
# "fma": a multiply-add whose fusion into one FMA instruction XLA:CPU decides per
# compiled loop shape (alpha dropout's affine map, additive/multiplicative noise,
# the mixing of examples, the variance of MC samples), so results may differ by
# a few roundings: tolerance 4 float32 ulps of the largest output. "matmul": a
# dot product over K terms, reordered by the per-device shapes: the float32
# worst-case bound K * eps * (|x| @ |w|) (see ``matmul_tol`` below).
TOLERANCE = {
    "alpha_dropout": "fma",
    "alpha_dropout_feature": "fma",
    "gaussian_dropout": "fma",
    "gaussian_noise": "fma",
    "concrete_dropout": "fma",
    "mc_dropout_predict": "fma",
    "mixup": "fma",
    "cutmix": "fma",
    "dropconnect_dense": "matmul",
    "dropconnect_dense_per_example": "matmul",
    "dropconnect_inference": "matmul",
    "sparse_vd_dense": "matmul",
}
# Where communication cannot be avoided: (function, axis types, spec) -> reason.
# None matches any axis types or spec.
COMMUNICATING = {
    ("mixup", None, None): "partners are drawn from the whole batch",
    ("cutmix", None, None): "partners are drawn from the whole batch",
    ("random_shift", None, "spatial"): "a shift crosses the devices' borders",
    # On Auto axes the sharding is not part of the traced type, so jaxreg cannot
    # run these per device (Explicit axes or shard_map can).
    ("dropconnect_dense_per_example", "Auto", None): "lax.map over split rows",
    ("dropblock", "Auto", "spatial"): "blocks cross the devices' borders",
    ("dropblock_coupled", "Auto", "spatial"): "blocks cross the devices' borders",
}
# keep_mask's forms: bool outputs (not differentiable), laid out by out_sharding
NO_GRAD = {"keep_mask", "keep_mask_broadcast"}
# the matmul functions contract the kernel's split columns in the backward pass
MATMUL = {f for f, kind in TOLERANCE.items() if kind == "matmul"}
EAGER = ["dropout", "dropout_broadcast_batch", "drop_path", "keep_mask", "dropblock"]
# the functions of the shard_map bundle (from the table in main(); each output
# is laid out like the table's input of the function)
SHARD_MAP_FUNCTIONS = [
    "dropout",
    "dropout_broadcast_batch",
    "dropout_broadcast_features",
    "dropout_fused_tanh",
    "dropout_rbg_key",
    "keep_mask",
    "drop_path",
    "alpha_dropout",
    "zoneout",
    "dropconnect",
    "spatial_dropout",
    "dropblock",
    "dropconnect_kernel",
]
INPUTS = ("x2", "x4", "w")
COLLECTIVES = r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"
RATE = 0.3


def communicating(name, mode, axis_type, spec_name):
    """Why ``name`` must communicate in this configuration (None: it must not)."""
    if mode == "shard_map":  # the shard_spec forms never communicate
        return None
    for (f, types, spec), reason in COMMUNICATING.items():
        if f == name and types in (None, axis_type) and spec in (None, spec_name):
            return reason
    return None


def cases():
    """The (mode, mesh, axis types, spec) configurations; needs no jax."""
    return [(*key, spec) for key, specs in CONFIGS.items() for spec in specs]


def main():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxreg

    assert jax.device_count() == 8, jax.devices()
    start = time.perf_counter()
    eps32 = float(np.finfo(np.float32).eps)
    keys = {"threefry": jax.random.key(42), "rbg": jax.random.key(42, impl="rbg")}
    data = {
        "x2": jax.random.normal(jax.random.key(1), (64, 128)),
        "x4": jax.random.normal(jax.random.key(2), (16, 8, 8, 32)),
        "w": jax.random.normal(jax.random.key(3), (128, 32)) / 8,
    }
    data["xm"] = data["x2"]
    ls2 = jnp.full((128, 32), -4.0)
    onehot2 = jax.nn.one_hot(jnp.arange(64) % 10, 10)
    onehot4 = jax.nn.one_hot(jnp.arange(16) % 10, 10)

    tf = "threefry"
    # The functions by the input they read (x2: (batch, features); x4: NHWC;
    # w: a kernel; xm and w: a matmul's input and kernel), each as
    # f(keys, x, traced rate, layout keywords, kernel) with x that input. The
    # shard_map bundle runs SHARD_MAP_FUNCTIONS of them with their shard_spec.
    by_input = {
        "x2": {
            "dropout": lambda k, x, r, o, w: jaxreg.dropout(k[tf], x, RATE, **o),
            "dropout_classic": lambda k, x, r, o, w: jaxreg.dropout(
                k[tf], x, RATE, inverted=False
            ),
            "dropout_traced_rate": lambda k, x, r, o, w: jaxreg.dropout(k[tf], x, r),
            "dropout_broadcast_batch": lambda k, x, r, o, w: jaxreg.dropout(
                k[tf], x, RATE, broadcast_dims=0, **o
            ),
            "dropout_broadcast_features": lambda k, x, r, o, w: jaxreg.dropout(
                k[tf], x, RATE, broadcast_dims=1, **o
            ),
            "dropout_fused_tanh": lambda k, x, r, o, w: jaxreg.dropout(
                k[tf], x, RATE, activation="tanh", **o
            ),
            "dropout_rbg_key": lambda k, x, r, o, w: jaxreg.dropout(
                k["rbg"], x, RATE, **o
            ),
            "keep_mask": lambda k, x, r, o, w: jaxreg.keep_mask(
                k[tf], x.shape, RATE, **o
            ),
            "keep_mask_broadcast": lambda k, x, r, o, w: jaxreg.keep_mask(
                k[tf], x.shape, RATE, broadcast_dims=0, **o
            ),
            "drop_path": lambda k, x, r, o, w: jaxreg.drop_path(k[tf], x, RATE, **o),
            "alpha_dropout": lambda k, x, r, o, w: jaxreg.alpha_dropout(
                k[tf], x, RATE, **o
            ),
            "zoneout": lambda k, x, r, o, w: jaxreg.zoneout(
                k[tf], 0.5 * x, x, RATE, **o
            ),
            "gaussian_dropout": lambda k, x, r, o, w: jaxreg.gaussian_dropout(
                k[tf], x, RATE
            ),
            "gaussian_noise": lambda k, x, r, o, w: jaxreg.gaussian_noise(
                k[tf], x, RATE
            ),
            "concrete_dropout": lambda k, x, r, o, w: jaxreg.concrete_dropout(
                k[tf], x, -1.0
            ),
            "dropconnect": lambda k, x, r, o, w: jaxreg.dropconnect(
                k[tf], x, RATE, **o
            ),
            "dropconnect_params": lambda k, x, r, o, w: jaxreg.dropconnect_params(
                k[tf], {"a": x, "b": 2 * x}, RATE
            )["b"],
            "mc_dropout_predict": lambda k, x, r, o, w: jaxreg.mc_dropout_predict(
                lambda kk, xx: jaxreg.dropout(kk, xx, RATE), k[tf], x, num_samples=3
            )[1],
        },
        "x4": {
            "spatial_dropout": lambda k, x, r, o, w: jaxreg.spatial_dropout(
                k[tf], x, RATE, **o
            ),
            "dropblock": lambda k, x, r, o, w: jaxreg.dropblock(
                k[tf], x, RATE, block_size=3, **o
            ),
            "dropblock_coupled": lambda k, x, r, o, w: jaxreg.dropblock(
                k[tf], x, RATE, block_size=3, couple_channels=True
            ),
            "alpha_dropout_feature": lambda k, x, r, o, w: jaxreg.alpha_dropout(
                k[tf], x, RATE, broadcast_dims=(1, 2)
            ),
            "cutout": lambda k, x, r, o, w: jaxreg.cutout(k[tf], x, size=3),
            "random_shift": lambda k, x, r, o, w: jaxreg.random_shift(
                k[tf], x, max_shift=2
            ),
        },
        "w": {
            "dropconnect_kernel": lambda k, x, r, o, w: jaxreg.dropconnect(
                k[tf], x, RATE, **o
            ),
        },
        "xm": {
            "dropconnect_dense": lambda k, x, r, o, w: jaxreg.dropconnect_dense(
                k[tf], x, w, RATE
            ),
            "dropconnect_dense_per_example": lambda k, x, r, o, w: (
                jaxreg.dropconnect_dense(
                    k[tf], x, w, RATE, per_example=True, chunk_size=4
                )
            ),
            "dropconnect_inference": lambda k, x, r, o, w: jaxreg.dropconnect_inference(
                k[tf], x, w, RATE, jax.nn.relu, num_samples=4
            ),
            "sparse_vd_dense": lambda k, x, r, o, w: jaxreg.sparse_vd_dense(
                k[tf], x, w, ls2
            ),
        },
    }
    mixers_by_input = {
        "x2": {
            "mixup": lambda k, x, r, o, w: jaxreg.mixup(k[tf], x, onehot2, alpha=0.4)[
                0
            ],
        },
        "x4": {
            "cutmix": lambda k, x, r, o, w: jaxreg.cutmix(k[tf], x, onehot4, alpha=1.0)[
                0
            ],
        },
    }

    def entries(groups):
        """name -> (f(keys, inputs, traced rate, layout), the input it is like),
        ``layout`` as :func:`layout` returns it."""

        def entry(name, like, f):
            def run(k, d, r, o):
                return f(k, d[like], r, o(like, mask=name in NO_GRAD), d["w"])

            return run, like

        return {
            name: entry(name, like, f)
            for like, fs in groups.items()
            for name, f in fs.items()
        }

    table = entries(by_input)
    mixers = entries(mixers_by_input)

    def layout(sharding=None, specs=None):
        """The layout keywords ``o(like, mask=False)`` the table's functions take.

        Outside a shard_map (``specs`` None): ``keep_mask``'s ``out_sharding``
        (``mask=True``), nothing for the others, which follow their input.
        Inside one: every function's ``shard_spec``, its input's block spec.
        """

        def o(like, mask=False):
            if specs is not None:
                return {"shard_spec": specs[like]}
            return {"out_sharding": sharding} if mask else {}

        return o

    def bundle(functions, sharding=None):
        """One function computing every function of ``functions``."""

        def run(k, d, r):
            o = layout(sharding)
            return {n: f(k, d, r, o) for n, (f, _) in functions.items()}

        return run

    def gradients(names):
        """The VJP (cotangent: ones) of each function w.r.t. its data input."""

        def run(k, d, r):
            grads = {}
            for name in names:
                f, like = table[name]

                def g(x, f=f, like=like):
                    return f(k, dict(d, **{like: x}), r, layout())

                y, vjp = jax.vjp(g, d[like])
                (grads[name],) = vjp(jnp.ones_like(y))
            return grads

        return run

    def shard_mapped(k, x2, x4, w, specs):
        """The shard_spec forms; ``specs`` are the in_specs of x2, x4 and w."""
        d = dict(zip(INPUTS, (x2, x4, w), strict=True))
        o = layout(specs=dict(zip(INPUTS, specs, strict=True)))
        return {n: table[n][0](k, d, RATE, o) for n in SHARD_MAP_FUNCTIONS}

    # ---- unsharded references (inputs committed to device 0)
    dev0 = jax.devices()[0]
    ref_in = {n: jax.device_put(a, dev0) for n, a in data.items()}
    rate = jnp.float32(RATE)
    everything = table | mixers
    differentiable = [n for n in table if n not in NO_GRAD]
    ref = jax.jit(bundle(everything))(keys, ref_in, rate)
    ref_grad = jax.jit(gradients(differentiable))(keys, ref_in, rate)
    # float32 worst case of a K-term dot product: K * eps * (|x| @ |w|), with
    # the kept weights scaled by 1 / (1 - rate); doubled for the functions that
    # combine two products (the moments' mean and variance)
    magnitude = float((jnp.abs(data["xm"]) @ jnp.abs(data["w"])).max())
    matmul_tol = 2 * data["w"].shape[0] * eps32 * magnitude / (1 - RATE)

    def tolerance(name, r):
        kind = TOLERANCE.get(name)
        if kind == "fma":
            return 4 * eps32 * float(np.abs(r).max())
        if kind == "matmul":
            return matmul_tol
        return 0.0

    def compiled(fn, *args):
        c = jax.jit(fn).lower(*args).compile()
        return c(*args), c.as_text()

    def found(hlo):
        return sorted(set(re.findall(COLLECTIVES, hlo))) if hlo else []

    def report(case, outs, reference, hlo, likes=None, alone=None, control=None):
        """One record per output. ``alone(name)`` compiles one function by
        itself, to attribute the collectives of a bundle that has any;
        ``control`` lists the collectives of the control program."""
        collectives = found(hlo)
        for name, y in outs.items():
            mine = collectives
            if collectives and alone is not None:
                mine = found(alone(name))
            r = np.asarray(reference[name])
            got = np.asarray(y)
            diff = np.abs(got.astype(np.float64) - r.astype(np.float64))
            like = None if likes is None else likes[name]
            record = {
                "case": [*case, name],
                "max_err": float(diff.max()) if diff.size else 0.0,
                "tol": tolerance(name, r),
                "same_sharding": None
                if like is None
                else bool(jax.typeof(y).sharding == jax.typeof(like).sharding),
                "out_spec": str(jax.typeof(y).sharding.spec),
                "collectives": mine,
                "control_collectives": control,
                "communicates": communicating(name, case[0], case[2], case[3]),
            }
            print(json.dumps(record), flush=True)

    meshes = {}
    print(json.dumps({"references_seconds": time.perf_counter() - start}))
    for mode, mesh_name, axis_type, spec_name in cases():
        begin = time.perf_counter()
        mesh_shape = MESHES[mesh_name]
        names = ("i", "j")[: len(mesh_shape)]
        if (mesh_name, axis_type) not in meshes:
            types = (getattr(AxisType, axis_type),) * len(mesh_shape)
            meshes[mesh_name, axis_type] = jax.make_mesh(
                mesh_shape, names, axis_types=types
            )
        mesh = meshes[mesh_name, axis_type]

        def spec_of(entries, names=names):
            if len(names) == 1:  # a 1-D mesh: "j" is the one axis too
                entries = tuple("i" if e == "j" else e for e in entries)
            return P(*entries)

        case = (mode, mesh_name, axis_type, spec_name)
        base = SPECS["both" if spec_name == "partial" else spec_name]
        specs = {n: spec_of(e) for n, e in base.items()}
        with jax.set_mesh(mesh):
            d = {n: jax.device_put(a, specs[n]) for n, a in data.items()}
            # keep_mask's out_sharding: the type's sharding on an Explicit mesh,
            # a constraint on an Auto one
            sharding = NamedSharding(mesh, specs["x2"])
            if axis_type == "Explicit":
                sharding = jax.typeof(d["x2"]).sharding
            # the layout each output must have: its data input's, or for a
            # matmul the plain product's
            likes = {n: d[like] for n, (_, like) in everything.items()}
            likes |= dict.fromkeys(MATMUL, d["xm"] @ d["w"])
            if axis_type == "Auto":
                likes = None  # the type carries no sharding to compare
            full = case in FULL
            quiet = {
                n: f
                for n, f in everything.items()
                if not communicating(n, mode, axis_type, spec_name)
                and n not in ("mixup", "cutmix")
                and (full or n in CORE)
            }
            if mode == "jit":

                def alone(n, d=d, s=sharding):
                    return compiled(bundle({n: everything[n]}, s), keys, d, rate)[1]

                outs, hlo = compiled(bundle(quiet, sharding), keys, d, rate)
                report(case, outs, ref, hlo, likes, alone)
            elif mode == "grad":
                # the matmuls' backward pass contracts the kernel's split
                # columns: they are differentiated only where it is not split
                chosen = [
                    n
                    for n in differentiable
                    if n in quiet and (n not in MATMUL or not any(base["w"]))
                ]

                def alone(n, d=d):
                    return compiled(gradients([n]), keys, d, rate)[1]

                outs, hlo = compiled(gradients(chosen), keys, d, rate)
                report(case, outs, ref_grad, hlo, likes, alone)
            elif mode == "communicating":
                loud = {
                    n: f
                    for n, f in everything.items()
                    if n not in quiet and (full or n in CORE)
                }
                outs, hlo = compiled(bundle(loud, sharding), keys, d, rate)
                report(case, outs, ref, hlo, likes)
            elif mode == "eager":
                outs = {n: table[n][0](keys, d, rate, layout(sharding)) for n in EAGER}
                report(case, outs, ref, None, likes)
            else:  # shard_map: each shard draws its block of the global mask
                partial = spec_name == "partial"  # manual "i", explicit "j"
                if partial:
                    in_specs = (P("i"), P("i"), P())
                else:
                    in_specs = tuple(specs[n] for n in INPUTS)
                out_specs = {
                    n: in_specs[INPUTS.index(table[n][1])] for n in SHARD_MAP_FUNCTIONS
                }
                args = [d[n] for n in INPUTS]
                axis_names = {"i"} if partial else set(names)

                def fn(k, x2, x4, w, s=in_specs):
                    return shard_mapped(k, x2, x4, w, s)

                def doubled(k, x2, x4, w, names=tuple(out_specs)):
                    inputs = (x2, x4, w)
                    return {n: 2 * inputs[INPUTS.index(table[n][1])] for n in names}

                mapped = functools.partial(
                    jax.shard_map,
                    in_specs=(P(),) + in_specs,
                    out_specs=out_specs,
                    axis_names=axis_names,
                )
                outs, hlo = compiled(mapped(fn), keys, *args)
                # JAX's own gathers at the boundary of a partial shard_map
                control = None
                if partial:
                    control = found(compiled(mapped(doubled), keys, *args)[1])
                report(case, outs, ref, hlo, control=control)
        print(json.dumps({"config": case, "seconds": time.perf_counter() - begin}))
    seconds = time.perf_counter() - start
    print(json.dumps({"done": True, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        sys.exit("set XLA_FLAGS=--xla_force_host_platform_device_count=8 first")
    main()
