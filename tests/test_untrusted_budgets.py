"""The decoded-size budget every reader of untrusted files holds to, and the memory a machine has.

EFFNET_JAX_DECODE_BUDGET sets it (512 MiB by default: real radiographs and weights fit twice over).
Each reader's refusals are tested with its format (test_untrusted_images*.py, test_untrusted_weights*.py,
test_untrusted_zips.py, ...); here, the setting itself, and the largest of the crafted bombs
(tests/crafted_fixtures.py) read in a process whose address space may grow by 1 GiB at most: each is
refused in one line naming the file, none is a MemoryError (docs/untrusted-inputs.md, "Decoded-size
budget and containers").
"""

import json
import os
import struct
import subprocess
import sys
import zlib

import crafted_fixtures as crafted
import numpy as np
import pytest

from effnet_jax import limits
from effnet_jax.data import dicom, imaging

# --- the setting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,expected", [(None, 512 << 20), ("", 512 << 20), ("1000", 1000), ("64M", 64 << 20), ("2G", 2 << 30)]
)
def test_the_budget_is_an_environment_setting(value, expected):
    environ = {} if value is None else {limits.ENV_VAR: value}
    assert limits.budget(environ) == expected


def test_real_radiographs_and_weights_fit_the_default_budget():
    budget = limits.DEFAULT_BUDGET
    assert 2 * dicom.decode_bytes(4000, 4000, 1, 16, compressed=True) < budget  # a large 16-bit DX, RLE
    assert 2 * imaging.decode_bytes("RGB", 3000, 3000) < budget  # a colour JPEG of a film
    assert 2 * imaging.decode_bytes("I;16", 4000, 4000) < budget  # a 16-bit PNG or TIFF
    assert 66_347_960 * 4 < budget  # EfficientNet-B7's parameters in float32


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5G"])
def test_a_bad_budget_setting_is_one_line_naming_the_variable(value):
    with pytest.raises(limits.BudgetError, match=f"^{limits.ENV_VAR}="):
        limits.budget({limits.ENV_VAR: value})


def test_available_memory_reads_memavailable_and_is_none_when_unknown(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   21000000 kB\n")
    assert limits.available_memory(str(meminfo)) == 21_000_000 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert limits.available_memory(str(meminfo)) is None
    assert limits.available_memory(str(tmp_path / "missing")) is None


# --- the address space the bombs may take ---------------------------------------------------------


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNDER_A_LIMIT = """
import json, resource, sys
from effnet_jax.data import imaging
from effnet_jax.weights import read_weights
import h5py, pydicom.pixels

# What the imports took, plus 1 GiB: twice the default budget, far below what the bombs would take.
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
for path in sys.argv[1:]:
    try:
        if path.endswith((".dcm", ".png")):
            with open(path, "rb") as f:
                imaging.decode_file(f.read(), path)
        else:
            read_weights(path)
        print(json.dumps([path, "read"]))
    except MemoryError:
        print(json.dumps([path, "MemoryError"]))
    except ValueError as e:
        print(json.dumps([path, str(e)]))
"""


def test_bombs_stay_within_the_address_space_limit(tmp_path):
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = z.compress(bytes(1 << 24)) + z.flush(zlib.Z_FULL_FLUSH)
    storage = block * 96 + z.flush()  # 1.5 GiB of zeros
    paths = [
        crafted.rle_bomb(tmp_path / "rle.dcm"),
        crafted.deflated_bomb(tmp_path / "deflated.dcm"),
        crafted.png_header(tmp_path / "header.png", 9000, 9000),
        crafted.keras_h5(
            tmp_path / "fill.h5", lambda f, g, n: g.create_dataset(n, shape=(1 << 30,), dtype=np.float32, fillvalue=1)
        ),
        crafted.keras_h5(tmp_path / "gzip.h5", lambda f, g, n: crafted.gzip_chunks(g, n, (16384, 16384), (2048, 2048))),
        crafted.zip_pth(tmp_path / "laughs.pth", crafted.laughs(40)),
        str(crafted.raw_zip(tmp_path / "storage.pth", crafted.deflated_storage_members(3 << 27, storage))),
        crafted.legacy_pth(tmp_path / "legacy.pth", 1 << 40, b"\x00" * 16),
        crafted.zip_pth(tmp_path / "memo.pth", b"\x80\x02]r" + struct.pack("<L", 2_000_000_000) + b"."),
    ]
    assert all(os.path.getsize(p) < 6 << 20 for p in paths)
    proc = subprocess.run(
        [sys.executable, "-c", _UNDER_A_LIMIT, *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": REPO, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(json.loads(line) for line in proc.stdout.splitlines())
    assert list(results) == paths
    for path, message in results.items():
        assert message.startswith(path) and "\n" not in message, (path, message)
        assert "budget" in message or "nested deeper" in message, (path, message)
