"""Worker for tests/test_sharding.py: runs on 8 simulated CPU devices.

Run as a script (``python tests/_sharding_worker.py``); the parent sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before this process imports
jax. For each case (function, mesh, PartitionSpec) it compiles the jitted function
for the sharded input, runs it, and prints one JSON line with: whether the output
equals the single-device output bit for bit, the collectives found in the compiled
HLO text, and the output sharding. Importing this module (pytest's doctest
collection does) runs nothing and imports nothing heavy.
"""

import json
import os
import re
import sys

MESHES = {"8": (8,), "2x4": (2, 4), "4x2": (4, 2)}

# spec name -> PartitionSpec entries, per mesh rank (axes named "i", "j")
SPECS_2D = {
    1: {"rows": ("i", None), "cols": (None, "i"), "replicated": ()},
    2: {
        "rows": ("i", None),
        "cols": (None, "j"),
        "2d": ("i", "j"),
        "2d_transposed": ("j", "i"),
        "rows_both_axes": (("i", "j"), None),
        "replicated": (),
    },
}
# spatial_dropout / dropblock inputs are NHWC: shard batch and channels.
SPECS_4D = {
    1: {"batch": ("i",), "channels": (None, None, None, "i"), "replicated": ()},
    2: {
        "batch": ("i",),
        "channels": (None, None, None, "j"),
        "batch_channels": ("i", None, None, "j"),
        "replicated": (),
    },
}
# dropout runs on every mesh and spec above; the other functions (to keep the
# number of compilations, hence the run time, down) on one spec per mesh.
FUNCTIONS_2D = [
    "dropout",
    "dropout_classic",
    "dropout_traced_rate",
    "dropout_broadcast_rows",
    "dropout_fused_tanh",
    "keep_mask",
    "drop_path",
    "gaussian_dropout",
    "dropout_rbg_key",
    "dropout_unsafe_rbg_key",
]
FUNCTIONS_4D = ["spatial_dropout", "dropblock"]
SUBSET = {
    2: [("8", "cols"), ("2x4", "2d"), ("4x2", "rows_both_axes")],
    4: [("8", "channels"), ("2x4", "batch_channels"), ("4x2", "batch")],
}

COLLECTIVES = r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"


def cases():
    """All (function, mesh, spec) triples; needs no jax."""
    out = [
        ("dropout", mesh_name, spec_name)
        for mesh_name, mesh_shape in MESHES.items()
        for spec_name in SPECS_2D[len(mesh_shape)]
    ]
    out += [(f, m, s) for f in FUNCTIONS_2D[1:] for m, s in SUBSET[2]]
    out += [(f, m, s) for f in FUNCTIONS_4D for m, s in SUBSET[4]]
    return out


def main():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxreg

    assert jax.device_count() == 8, jax.devices()
    keys = {
        "default": jax.random.key(42),
        "dropout_rbg_key": jax.random.key(42, impl="rbg"),
        "dropout_unsafe_rbg_key": jax.random.key(42, impl="unsafe_rbg"),
    }
    x2 = jax.random.normal(jax.random.key(1), (64, 128))
    x4 = jax.random.normal(jax.random.key(2), (16, 8, 8, 32))
    rate = 0.3

    def make(fn_name):
        """(jitted function, args builder) for a function name."""
        if fn_name == "keep_mask":
            return (lambda k, x: jaxreg.keep_mask(k, x.shape, rate)), x2
        if fn_name == "dropout":
            return (lambda k, x: jaxreg.dropout(k, x, rate)), x2
        if fn_name == "dropout_classic":
            return (lambda k, x: jaxreg.dropout(k, x, rate, inverted=False)), x2
        if fn_name == "dropout_traced_rate":
            return (lambda k, x, r: jaxreg.dropout(k, x, r)), x2
        if fn_name == "dropout_broadcast_rows":
            return (lambda k, x: jaxreg.dropout(k, x, rate, broadcast_dims=(0,))), x2
        if fn_name == "dropout_fused_tanh":
            return (lambda k, x: jaxreg.dropout(k, x, rate, activation="tanh")), x2
        if fn_name == "drop_path":
            return (lambda k, x: jaxreg.drop_path(k, x, rate)), x2
        if fn_name.endswith("rbg_key"):
            return (lambda k, x: jaxreg.dropout(k, x, rate)), x2
        if fn_name == "gaussian_dropout":
            return (lambda k, x: jaxreg.gaussian_dropout(k, x, rate)), x2
        if fn_name == "spatial_dropout":
            return (lambda k, x: jaxreg.spatial_dropout(k, x, rate)), x4
        if fn_name == "dropblock":
            return (lambda k, x: jaxreg.dropblock(k, x, rate, block_size=3)), x4
        raise KeyError(fn_name)

    references = {}
    meshes = {
        name: Mesh(np.array(jax.devices()).reshape(shape), ("i", "j")[: len(shape)])
        for name, shape in MESHES.items()
    }
    for fn_name, mesh_name, spec_name in cases():
        fn, x = make(fn_name)
        extra = (jnp.float32(rate),) if fn_name == "dropout_traced_rate" else ()
        key = keys.get(fn_name, keys["default"])
        if fn_name not in references:
            # single-device reference: committed to device 0
            x0 = jax.device_put(x, jax.devices()[0])
            references[fn_name] = np.asarray(jax.jit(fn)(key, x0, *extra))
        mesh = meshes[mesh_name]
        specs = (SPECS_4D if x.ndim == 4 else SPECS_2D)[len(mesh.devices.shape)]
        sharding = NamedSharding(mesh, P(*specs[spec_name]))
        xs = jax.device_put(x, sharding)
        if fn_name == "keep_mask":
            # no data input: ask for a sharded output instead
            jitted = jax.jit(fn, out_shardings=sharding)
        else:
            jitted = jax.jit(fn)
        compiled = jitted.lower(key, xs, *extra).compile()
        out = compiled(key, xs, *extra)
        hlo = compiled.as_text()
        record = {
            "case": [fn_name, mesh_name, spec_name],
            "equal": bool(np.array_equal(np.asarray(out), references[fn_name])),
            "collectives": sorted(set(re.findall(COLLECTIVES, hlo))),
            "out_spec": str(out.sharding.spec),
            "in_spec": str(sharding.spec),
        }
        print(json.dumps(record), flush=True)
    print(
        json.dumps(
            {
                "done": True,
                "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        sys.exit("set XLA_FLAGS=--xla_force_host_platform_device_count=8 first")
    main()
