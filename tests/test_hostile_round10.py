"""Hostile run folders and weight files, round 10: step folders orbax would not write, float8 safetensors.

Fixtures are written here; no model is trained and nothing is compiled.
"""

import json
import os
import shutil
import struct

import pytest

from effnet_jax import runs
from effnet_jax.runs import checkpoints as checkpoint_lib
from effnet_jax.weights import WeightFileError
from effnet_jax.weights.readers import read_weights


def _rename_step(workdir, name):
    ckpts = checkpoint_lib.checkpoint_dir(workdir)
    os.rename(os.path.join(ckpts, "3"), os.path.join(ckpts, name))
    return os.path.join(ckpts, name)


def test_a_step_folder_with_leading_zeros_is_named_not_no_checkpoints(run_copy):
    # Before: orbax skipped checkpoints/007 and the error was "no checkpoints in workdir".
    _rename_step(run_copy, "007")
    with pytest.raises(ValueError, match=r"checkpoints/007: a step folder named '007'.*'7'"):
        runs.open(run_copy)


def test_a_step_folder_beyond_the_step_counter_is_refused(run_copy):
    # Before: a copied checkpoints/99999999999999999999999 was taken as the latest (and best) step.
    ckpts = checkpoint_lib.checkpoint_dir(run_copy)
    shutil.copytree(os.path.join(ckpts, "3"), os.path.join(ckpts, "99999999999999999999999"))
    with pytest.raises(ValueError, match=r"99999999999999999999999: a step folder numbered beyond .*2147483647"):
        checkpoint_lib.read_checkpoint(run_copy, "latest", with_state=False)


def test_the_largest_int32_step_and_a_killed_saves_tmp_folder_are_still_accepted(run_copy):
    ckpts = checkpoint_lib.checkpoint_dir(run_copy)
    os.makedirs(os.path.join(ckpts, "4.orbax-checkpoint-tmp-1700000000000000"))
    checkpoint_lib.check_checkpoints(run_copy)
    _rename_step(run_copy, str(2**31 - 1))
    checkpoint_lib.check_checkpoints(run_copy)


def _safetensors(path, dtype, nbytes):
    header = json.dumps(
        {"w": {"dtype": dtype, "shape": [nbytes // {"BF16": 2}.get(dtype, 1)], "data_offsets": [0, nbytes]}}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * nbytes)
    return path


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_a_float8_safetensors_tensor_is_refused_naming_file_tensor_and_type(tmp_path, dtype):
    # Before: "module 'numpy' has no attribute 'float8_e4m3fn'".
    path = _safetensors(tmp_path / "w.safetensors", dtype, 2)
    with pytest.raises(WeightFileError, match=rf"w.safetensors: tensor 'w' is stored as {dtype}, a type this reader"):
        read_weights(path)


def test_a_bfloat16_safetensors_tensor_is_read_as_float32(tmp_path):
    # Before: "tensor 'w' is bfloat16; weights are real numbers".
    tensors, fmt = read_weights(_safetensors(tmp_path / "w.safetensors", "BF16", 4))
    assert fmt == "safetensors" and tensors["w"].dtype.name == "float32" and tensors["w"].shape == (2,)
