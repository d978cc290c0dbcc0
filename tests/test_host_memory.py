"""effnet_jax.host_memory: the CPU step's scratch is reused, not page-faulted in again every call.

Each case runs in a fresh interpreter (the allocator is process state and must be tuned
before JAX starts its threads) and counts the minor page faults of one call of a jitted
function whose scratch is 64 MiB (larger than any block glibc keeps by default), the median
of ten calls after six warm-up calls (a call's scratch may be freed just after the next
call has allocated its own, so now and then a call grows the heap).
"""

import json
import os
import subprocess
import sys

import pytest

from effnet_jax import host_memory

pytestmark = pytest.mark.skipif(host_memory._glibc() is None, reason="the allocator options are glibc's (Linux)")

# Tunes (or not) through the command-line package's import, then starts numpy's and JAX's
# threads, and counts the faults of a typical call.
_PROBE = """
import json, os, resource, sys
import effnet_jax.cli  # the command-line tools' import tunes the allocator (unless opted out)
import numpy as np
np.ones((256, 256)) @ np.ones((256, 256))
import jax, jax.numpy as jnp
from effnet_jax.host_memory import host_memory_kept

def g(x):
    # The sorted copy and its reversal are intermediates: XLA keeps them in the call's scratch.
    y = jnp.sort(jnp.exp(x), axis=1)
    return (y[:, ::-1] * x).sum()

x = jnp.ones((2048, 4096), jnp.float32) * 1e-3
f = jax.jit(g).lower(x).compile()
scratch_pages = f.memory_analysis().temp_size_in_bytes // 4096
for _ in range(6):
    f(x).block_until_ready()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[len(faults) // 2]
print(json.dumps({"faults": faults, "scratch_pages": scratch_pages, "kept": host_memory_kept()}))
"""


def _probe(keep: str | None) -> dict:
    env = dict(os.environ)
    env.pop(host_memory.ENV_VAR, None)
    if keep is not None:
        env[host_memory.ENV_VAR] = keep
    env["XLA_FLAGS"] = ""  # one CPU device: the fake-device count of the test run is not needed
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_import_keeps_the_scratch_of_a_step():
    tuned = _probe(None)
    assert tuned["kept"] is True
    assert tuned["scratch_pages"] >= 64 * 2**20 // 4096, tuned
    assert tuned["faults"] < tuned["scratch_pages"] // 10, tuned


def test_opting_out_leaves_glibc_which_faults_the_scratch_in_every_call():
    plain = _probe("0")
    assert plain["kept"] is False
    assert plain["faults"] > plain["scratch_pages"] // 2, plain


@pytest.mark.parametrize(
    "value, out", [("0", True), ("false", True), (" Off ", True), ("no", True), ("1", False), ("", False)]
)
def test_opt_out_values(value, out):
    assert host_memory.opted_out({host_memory.ENV_VAR: value}) is out
    assert host_memory.opted_out({}) is False


def test_nothing_to_tune_off_linux(monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory._glibc() is None
