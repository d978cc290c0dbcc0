"""Bad weight files and mismatches fail with errors that name the file, the key and both shapes."""

import io
import logging
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

import effnet_jax
from effnet_jax.weights import WeightFileError, read_weights


@pytest.fixture(scope="module")
def lite0_state():
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False).state_dict()


@pytest.fixture(scope="module")
def lite0_pth(lite0_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "lite0.pth"
    torch.save(lite0_state, path)
    return path


def test_truncated_pth_is_a_clear_error(lite0_pth, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(lite0_pth.read_bytes()[: lite0_pth.stat().st_size // 2])
    with pytest.raises(WeightFileError, match="cut.pth"):
        read_weights(cut)


def test_truncated_safetensors_is_a_clear_error(lite0_state, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in lite0_state.items()}, str(path))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match="cut.safetensors"):
        read_weights(cut)


def test_truncated_h5_is_a_clear_error(tmp_path):
    import h5py

    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"stem_conv"]
        f.create_dataset("stem_conv/stem_conv/kernel", data=np.zeros((3, 3, 3, 32), np.float32))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[:600])
    with pytest.raises(WeightFileError, match="cut.h5"):
        read_weights(cut)


def test_unknown_format_lists_supported_ones(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightFileError, match="weights.npz.*Supported: safetensors.*pytorch.*keras_h5"):
        read_weights(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(WeightFileError, match="nothing.pth"):
        effnet_jax.create_model("efficientnet_b0", pretrained=str(tmp_path / "nothing.pth"))


def test_pickled_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    buffer = io.BytesIO()
    pickle.dump({"conv_stem.weight": Exploit()}, buffer)
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", buffer.getvalue())
    with pytest.raises(WeightFileError, match="refusing to unpickle builtins.print"):
        read_weights(path)


def test_variant_mismatch_names_first_key_and_both_shapes(lite0_pth):
    # Lite3 widens the stages: the first block whose output differs is named with both shapes.
    with pytest.raises(
        WeightFileError,
        match=r"lite0.pth: shape mismatch at 'params/blocks_0_0/conv_pw/kernel': "
        r"file has \(1, 1, 32, 16\), model expects \(1, 1, 32, 24\)",
    ):
        effnet_jax.create_model("efficientnet_lite3", pretrained=str(lite0_pth))


def test_format_mismatch_names_the_unknown_key(lite0_pth):
    # A Lite file has no squeeze-excite, which B0 needs: its first missing key is named.
    with pytest.raises(WeightFileError, match=r"lite0.pth.*'params/blocks_0_0/se/conv_expand/bias'.*missing"):
        effnet_jax.create_model("efficientnet_b0", pretrained=str(lite0_pth))


def test_foreign_keys_are_named(lite0_state, tmp_path):
    path = tmp_path / "extra.pth"
    torch.save({**lite0_state, "aux_head.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightFileError, match="extra.pth: key 'params/aux_head/kernel' has no counterpart"):
        effnet_jax.create_model("efficientnet_lite0", pretrained=str(path))


def test_head_is_reinitialised_and_logged_when_classes_differ(lite0_pth, lite0_state, caplog):
    with caplog.at_level(logging.INFO, logger="effnet_jax"):
        model, variables = effnet_jax.create_model("efficientnet_lite0", num_classes=2, pretrained=str(lite0_pth))
    assert "params/classifier/kernel" in caplog.text and "params/classifier/bias" in caplog.text
    assert variables["params"]["classifier"]["kernel"].shape == (1280, 2)
    np.testing.assert_array_equal(
        variables["params"]["conv_head"]["kernel"], lite0_state["conv_head.weight"].numpy().transpose(2, 3, 1, 0)
    )


def test_keras3_native_weights_file_is_explained(tmp_path):
    import h5py

    path = tmp_path / "model.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("layers")
        f.create_group("vars")
    with pytest.raises(WeightFileError, match="Keras 3 '.weights.h5'.*model.save\\('model.h5'\\)"):
        read_weights(path)


def test_hub_name_offline_fails_at_once_with_how_to(monkeypatch):
    import huggingface_hub

    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(WeightFileError, match="timm/efficientnet_b0.ra_in1k.*offline.*pass the local file"):
        effnet_jax.create_model("efficientnet_b0", pretrained="timm/efficientnet_b0.ra_in1k")
    # Only the local cache is consulted: no download attempts and their retries.
    assert calls and all(kwargs["local_files_only"] for kwargs in calls)


def test_hub_name_without_network_fails_without_retrying(monkeypatch):
    import socket

    from effnet_jax.weights import hub

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(WeightFileError, match="cannot resolve huggingface.co"):
        hub.download("timm/efficientnet_b0.ra_in1k")


def test_converted_dir_refuses_another_variant(lite0_pth, tmp_path):
    from effnet_jax.weights.export import convert_to_checkpoint as convert

    convert("efficientnet_lite0", str(lite0_pth), str(tmp_path / "out"))
    with pytest.raises(WeightFileError, match="holds weights for 'efficientnet_lite0'.*'efficientnet_lite1'"):
        effnet_jax.create_model("efficientnet_lite1", pretrained=str(tmp_path / "out"))


def test_convert_cli_writes_a_loadable_checkpoint_and_a_summary(lite0_pth, lite0_state, tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "effnet_jax.cli.convert",
            "--variant",
            "efficientnet_lite0",
            "--input",
            str(lite0_pth),
            "--output",
            str(out),
            "--num_classes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    # ImageNet's 1000-class head (1,281,000 parameters) replaced by a 2-class one (2,562).
    assert "num_params     3373570" in result.stdout
    # The last line is a working call: the real output path, not a placeholder.
    assert result.stdout.splitlines()[-1] == (
        f"Wrote {out}; load it with effnet_jax.create_model('efficientnet_lite0', pretrained={str(out)!r})"
    )
    assert "params/classifier/kernel" in result.stdout and "timm_pytorch" in result.stdout
    model, variables = effnet_jax.create_model("efficientnet_lite0", num_classes=2, pretrained=str(out))
    np.testing.assert_array_equal(
        variables["params"]["blocks_6_0"]["conv_pwl"]["kernel"],
        lite0_state["blocks.6.0.conv_pwl.weight"].numpy().transpose(2, 3, 1, 0),
    )
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "effnet_jax.cli.convert",
            "--variant",
            "efficientnet_lite0",
            "--input",
            str(lite0_pth),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 1 and "already exists" in again.stderr
