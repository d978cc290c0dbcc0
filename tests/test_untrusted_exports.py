"""Exported model folders (effnet-export's output) that effnet-predict --exported and effnet-serve load.

An export is model.json, weights.npz and model.stablehlo (and gradcam.stablehlo) with their SHA-256
sums. Each folder here is the tiny export of tests/conftest.py, copied and tampered with: loading
refuses what model.json or the zip headers declare beyond the budget, a link or FIFO among the files,
and a function effnet-export never emits, each in one line naming the file; a function that returns
no probability is an error naming it, not a probability (docs/untrusted-inputs.md, docs/serving.md).
"""

import errno
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import struct
import tracemalloc
import zipfile

import crafted_fixtures as crafted
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_module

from effnet_jax import limits, serving
from effnet_jax.serving import bundle

# --- model.json -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_deeply_nested_model_json_is_one_line(depth, tmp_path):
    from effnet_jax.serving import bundle

    (tmp_path / "model.json").write_text("[" * depth + "]" * depth)
    with pytest.raises(bundle.ExportedModelError) as info:
        bundle.read_model_json(str(tmp_path))
    assert "JSON nested deeper than 32 levels" in crafted.one_line_naming(info.value, tmp_path / "model.json")


def test_a_sparse_model_json_is_refused_from_its_size(tmp_path):
    from effnet_jax.serving import bundle

    with open(tmp_path / "model.json", "wb") as f:
        f.truncate(2 << 30)
    with pytest.raises(bundle.ExportedModelError, match="model.json: 2147483648 bytes, more than the 1048576"):
        bundle.read_model_json(str(tmp_path))


def _copy_with_model_json(exported, tmp_path, edit=None) -> str:
    folder = str(tmp_path / "exported")
    shutil.copytree(exported, folder)
    if edit is not None:
        path = os.path.join(folder, "model.json")
        with open(path) as f:
            text = edit(f.read())
        with open(path, "w") as f:
            f.write(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        with open(os.path.join(folder, "SHA256SUMS")) as f:
            lines = [line for line in f.read().splitlines() if not line.endswith("model.json")]
        with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
            f.write("\n".join([*lines, f"{digest}  model.json"]) + "\n")
    return folder


def test_an_infinite_temperature_in_model_json_is_refused(exported, tmp_path):
    # JSON's Infinity parsed, passed 'v > 0', and was echoed as "temperature": Infinity in every record.
    from effnet_jax import serving

    folder = _copy_with_model_json(
        exported, tmp_path, lambda text: json.dumps({**json.loads(text), "temperature": float("inf")})
    )
    with pytest.raises(serving.ExportedModelError, match=r"model\.json: bad value for 'temperature': inf"):
        serving.load(folder)


@pytest.mark.parametrize("key, value", [("model", [1, 2]), ("training", "x")])
def test_a_model_json_whose_model_or_training_is_no_object_is_refused_at_load(exported, tmp_path, key, value):
    # Before: it loaded, and effnet-serve stopped in an AttributeError traceback ("'list' object has no attribute 'items'").

    folder = _copy(exported, tmp_path, record=lambda meta: meta.update({key: value}))
    with pytest.raises(
        serving.ExportedModelError, match=f"model.json: bad value for '{key}': {value!r}".replace("[", "\\[")
    ):
        serving.load(folder)


def test_nan_in_model_json_is_shown_as_null_by_get_v1_model(exported, tmp_path):
    # Before: GET /v1/model failed every time ("Out of range float values are not JSON compliant": a 500).
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from effnet_jax.server import Settings, create_app

    def record(meta):
        meta["metrics"] = {"validation": {"auc": float("nan"), "n": 3}}
        meta["created"] = float("inf")

    folder = _copy(exported, tmp_path, record=record)
    assert "NaN" in open(os.path.join(folder, bundle.MODEL_JSON)).read()
    with TestClient(create_app(serving.load(folder), Settings(max_batch=1, max_queue=2))) as client:
        answer = client.get("/v1/model")
    assert answer.status_code == 200
    assert answer.json()["metrics"] == {"validation": {"auc": None, "n": 3}} and answer.json()["created"] is None


# --- weights.npz ----------------------------------------------------------------------------------


def test_exported_weights_declaring_more_than_the_budget_are_refused_before_reading():
    import jax

    from effnet_jax.serving import ExportedModelError
    from effnet_jax.serving import model as serving_model

    avals = [jax.ShapeDtypeStruct((3,), np.float32), jax.ShapeDtypeStruct((1 << 30,), np.float32)]
    with pytest.raises(ExportedModelError) as info:
        serving_model._read_weights("DIR/weights.npz", b"not even a zip", avals)
    crafted.refused_by_budget(info.value, "DIR/weights.npz")


def _copy(exported, tmp_path, weights: bytes | None = None, record=None) -> str:
    """A copy of the export; ``weights`` replace weights.npz, ``record(meta)`` edits model.json (SHA256SUMS kept right)."""
    folder = str(tmp_path / "exported")
    shutil.copytree(exported, folder)
    if weights is not None:
        with open(os.path.join(folder, "weights.npz"), "wb") as f:
            f.write(weights)
    if record is not None:
        with open(os.path.join(folder, "model.json")) as f:
            meta = json.load(f)
        record(meta)
        text = json.dumps(meta).encode()
        with open(os.path.join(folder, "model.json"), "wb") as f:
            f.write(text)
        with open(os.path.join(folder, "SHA256SUMS")) as f:
            lines = [line for line in f.read().splitlines() if not line.endswith("model.json")]
        with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
            f.write("\n".join([*lines, f"{bundle.sha256(text)}  model.json"]) + "\n")
    return folder


def _load_error_and_peak(folder) -> tuple[str, int]:
    """The one-line ExportedModelError of loading ``folder``, and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(serving.ExportedModelError) as caught:
            serving.load(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(caught.value)
    return str(caught.value), peak


BIG = 128 << 20  # sparse: costs nothing to make; was read whole before the SHA-256 refused it


def test_a_weights_file_larger_than_its_arrays_is_refused_before_it_is_read(exported, tmp_path):
    # model.json records a 128 MiB weights.npz: more than the function's arrays (13 MB) can take.
    def record_big(meta):
        meta["files"]["weights"].update(bytes=BIG, sha256="0" * 64)

    folder = _copy(exported, tmp_path / "a", record=record_big)
    os.truncate(os.path.join(folder, "weights.npz"), BIG)
    message, peak = _load_error_and_peak(folder)
    assert peak < 32 << 20  # the 128 MiB were not read
    weights = os.path.join(folder, "weights.npz")
    assert message.startswith(f"{weights}: {os.path.join(folder, 'model.json')} records 134,217,728 bytes, more than ")
    assert "an .npz of the function's" in message

    # model.json as exported, the file swapped for a 128 MiB one: refused from its size, unread.
    folder = _copy(exported, tmp_path / "b")
    recorded = os.path.getsize(os.path.join(exported, "weights.npz"))
    os.truncate(os.path.join(folder, "weights.npz"), BIG)
    message, peak = _load_error_and_peak(folder)
    assert peak < 32 << 20
    assert message.startswith(f"{os.path.join(folder, 'weights.npz')}: ")
    assert f"{BIG} bytes" in message and (f"expected {recorded}" in message or "more than the" in message)


def _repacked(exported, compression, members=None) -> bytes:
    """The export's weights.npz with its first ``members`` members (default all) recompressed with ``compression``."""
    out = io.BytesIO()
    with zipfile.ZipFile(os.path.join(exported, "weights.npz")) as src, zipfile.ZipFile(out, "w") as dst:
        for i, name in enumerate(src.namelist()):
            chosen = members is None or i < members
            dst.writestr(name, src.read(name), compress_type=compression if chosen else zipfile.ZIP_STORED)
    return out.getvalue()


def test_weights_compressed_other_than_np_savez_does_are_refused_naming_the_member(exported, tmp_path):
    # An LZMA member's decoder allocates the dictionary its stream declares (up to GBs): loaded before.
    data = _repacked(exported, zipfile.ZIP_LZMA, members=1)

    def record(meta):
        meta["files"]["weights"].update(bytes=len(data), sha256=bundle.sha256(data))

    folder = _copy(exported, tmp_path / "lzma", weights=data, record=record)
    message, _ = _load_error_and_peak(folder)
    assert message == (
        f"{os.path.join(folder, 'weights.npz')}: arr_0.npy is encrypted or compressed with method "
        f"{zipfile.ZIP_LZMA} (np.savez stores or deflates)"
    )
    # np.savez_compressed's deflate still loads.
    data = _repacked(exported, zipfile.ZIP_DEFLATED)
    folder = _copy(exported, tmp_path / "deflate", weights=data, record=record)
    assert serving.load(folder).class_names == ("NORMAL", "PNEUMONIA")


def test_a_member_declaring_more_than_its_array_is_refused_from_the_zip_headers(exported, tmp_path):
    # arr_0.npy declares (in the zip's central directory) 1 MiB more than its array: the header says so.
    data = bytearray(open(os.path.join(exported, "weights.npz"), "rb").read())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        size, central = archive.getinfo("arr_0.npy").file_size, archive.start_dir
    # The central directory's first entry: arr_0.npy, as np.savez writes them in order.
    assert data[central : central + 4] == b"PK\x01\x02"
    assert data[central + 46 : central + 46 + 9] == b"arr_0.npy"
    # Its uncompressed size, 24 bytes into the entry (np.savez's zip64 extras are in the local headers only).
    assert int.from_bytes(data[central + 24 : central + 28], "little") == size
    data[central + 24 : central + 28] = (size + (1 << 20)).to_bytes(4, "little")
    data = bytes(data)

    def record(meta):
        meta["files"]["weights"].update(bytes=len(data), sha256=bundle.sha256(data))

    folder = _copy(exported, tmp_path / "c", weights=data, record=record)
    message, _ = _load_error_and_peak(folder)
    assert message.startswith(f"{os.path.join(folder, 'weights.npz')}: arr_0.npy declares {size + (1 << 20):,} bytes")


def test_an_npy_header_holding_code_runs_nothing(exported, tmp_path):

    sentinel = tmp_path / "ran"
    with zipfile.ZipFile(os.path.join(exported, bundle.WEIGHTS_FILE)) as src:
        members = {name: src.read(name) for name in src.namelist()}
    first = members["arr_0.npy"]
    length = struct.unpack("<H", first[8:10])[0]
    code = f"__import__('os').system('touch {sentinel}')".encode()
    code += b" " * (length - len(code) - 1) + b"\n"
    members["arr_0.npy"] = first[:10] + code + first[10 + length :]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
    data = out.getvalue()

    def record(meta):
        meta["files"]["weights"].update(bytes=len(data), sha256=bundle.sha256(data))

    folder = _copy(exported, tmp_path, weights=data, record=record)
    with pytest.raises(serving.ExportedModelError, match="weights.npz: unreadable array arr_0.npy \\(ValueError"):
        serving.load(folder)
    assert not sentinel.exists()


# --- links and FIFOs among an export's files ------------------------------------------------------


def test_a_link_among_an_exported_folders_files_is_refused(exported, tmp_path):
    from effnet_jax import serving

    folder = _copy_with_model_json(exported, tmp_path)
    outside = tmp_path / "elsewhere.npz"
    shutil.move(os.path.join(folder, "weights.npz"), outside)
    os.symlink(outside, os.path.join(folder, "weights.npz"))
    with pytest.raises(serving.ExportedModelError, match=r"weights\.npz: is a symbolic link"):
        serving.load(folder)
    os.remove(os.path.join(folder, "weights.npz"))
    os.mkfifo(os.path.join(folder, "weights.npz"))  # opened without blocking, then refused
    assert stat.S_ISFIFO(os.lstat(os.path.join(folder, "weights.npz")).st_mode)
    with pytest.raises(serving.ExportedModelError, match=r"weights\.npz: not a regular file"):
        serving.load(folder)


def test_links_are_followed_only_where_the_callers_contract_says(tmp_path):
    target = tmp_path / "scan.jpeg"
    target.write_bytes(b"\xff\xd8\xffdata")
    link = tmp_path / "link.jpeg"
    os.symlink(target, link)
    # Images and lists a user names may be links (followed, as before) ...
    assert limits.read_regular_file(str(link)) == target.read_bytes()
    with pytest.raises(OSError) as caught:
        limits.read_regular_file(str(link), follow_symlinks=False)
    assert caught.value.errno == errno.ELOOP
    # ... an exported folder's own files may not: the same helper, with O_NOFOLLOW.
    with pytest.raises(serving.ExportedModelError, match=r"link\.jpeg: is a symbolic link"):
        bundle.read_limited(str(link), 1 << 20)
    with limits.open_regular_file(str(target)) as f:
        assert os.get_blocking(f.fileno()) and stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    assert bundle.read_limited(str(target), 1 << 20) == target.read_bytes()
    with pytest.raises(serving.ExportedModelError, match=r"scan\.jpeg: 7 bytes, more than the 4 "):
        bundle.read_limited(str(target), 4)


# --- hand-made functions --------------------------------------------------------------------------


def _with_function(exported, tmp_path, body):
    """A copy of ``exported`` whose model.stablehlo is ``body(weights, images)``, model.json and SHA256SUMS updated."""
    from jax import export as jax_export

    from effnet_jax.serving import bundle

    folder = tmp_path / "hand_made"
    shutil.copytree(exported, folder)
    original = jax_export.deserialize(bytearray((folder / bundle.FUNCTION_FILE).read_bytes()))
    *weights, image = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in original.in_avals]
    blob = jax_export.export(jax.jit(body), platforms=["cpu"])(weights, image).serialize()
    (folder / bundle.FUNCTION_FILE).write_bytes(blob)
    meta = json.loads((folder / bundle.MODEL_JSON).read_text())
    meta["files"]["function"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    (folder / bundle.MODEL_JSON).write_text(json.dumps(meta))
    names = (bundle.MODEL_JSON, bundle.FUNCTION_FILE, bundle.WEIGHTS_FILE, bundle.GRADCAM_FILE)
    (folder / bundle.SUMS_FILE).write_text(bundle.sums_text({n: (folder / n).read_bytes() for n in names}))
    return folder


def _endless(weights, images):
    state = (jnp.int32(0), jnp.zeros(images.shape[0], jnp.float32))
    return jax.lax.while_loop(lambda s: s[0] < 1, lambda s: (s[0] * 0, s[1] + 1.0), state)[1]


def _huge(weights, images):
    planes = jnp.ones((images.shape[0], 1 << 16, 1 << 16), jnp.float32) * images.astype(jnp.float32).sum()
    return jnp.tanh(planes.sum(axis=(1, 2))) * 0 + 0.5


@pytest.mark.parametrize(
    "body, why",
    [
        (_endless, "holds a stablehlo.while op, which effnet-export never emits"),
        (_huge, r"largest tensor type tensor<\?x65536x65536xf32> .* would take 17,179,869,184 bytes"),
    ],
    ids=["endless-loop", "huge-tensor"],
)
def test_a_hand_made_function_that_loops_or_allocates_is_refused_at_load(exported, tmp_path, body, why):
    # Before: the endless loop loaded, and effnet-predict --exported never returned (10 CPU-minutes, killed).
    from effnet_jax import serving

    folder = _with_function(exported, tmp_path, body)
    with pytest.raises(serving.ExportedModelError, match=f"{folder}/model.stablehlo: .*{why}"):
        serving.load(str(folder))


def test_the_real_export_passes_the_module_checks(exported):
    from effnet_jax import serving

    model = serving.load(exported)
    assert model.run(np.zeros((2, model.image_size, model.image_size), np.uint8)).shape == (2,)


def _complex_planes(weights, images):
    planes = jnp.ones((images.shape[0], 1 << 15, 1 << 15), jnp.complex64) * images.astype(jnp.float32).sum()
    return jnp.real(planes.sum(axis=(1, 2))) * 0 + 0.5


@pytest.mark.parametrize(
    "body, why",
    [(_complex_planes, r"tensor<\?x32768x32768xcomplex<f32>> \(for one image\) would take 8,589,934,592")],
    ids=["complex"],
)
def test_tensors_the_budget_check_missed_are_refused_at_load(exported, tmp_path, body, why):
    # Before: the pattern read no complex type, and an 8 GiB tensor per image loaded.

    from effnet_jax import serving

    folder = _with_function(exported, tmp_path, body)
    with pytest.raises(serving.ExportedModelError, match=f"{folder}/model.stablehlo: its largest tensor type {why}"):
        serving.load(str(folder))


def _with_blob(exported, tmp_path, blob: bytes, gradcam: bool = True):
    """A copy of ``exported`` whose model.stablehlo is ``blob`` (model.json and SHA256SUMS kept right)."""
    folder = tmp_path / "hand_made"
    shutil.copytree(exported, folder)
    (folder / bundle.FUNCTION_FILE).write_bytes(blob)
    meta = json.loads((folder / bundle.MODEL_JSON).read_text())
    meta["files"]["function"].update(bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    names = [bundle.MODEL_JSON, bundle.FUNCTION_FILE, bundle.WEIGHTS_FILE]
    if gradcam:
        names.append(bundle.GRADCAM_FILE)
    else:
        del meta["files"]["gradcam"]
        (folder / bundle.GRADCAM_FILE).unlink()
    (folder / bundle.MODEL_JSON).write_text(json.dumps(meta))
    (folder / bundle.SUMS_FILE).write_text(bundle.sums_text({n: (folder / n).read_bytes() for n in names}))
    return folder


def test_a_function_of_no_argument_is_refused_naming_it(exported, tmp_path):
    # Before: "not enough values to unpack (expected at least 1, got 0)", naming no file.
    from jax import export as jax_export

    blob = jax_export.export(jax.jit(lambda: jnp.zeros((1,), jnp.float32)), platforms=["cpu"])().serialize()
    folder = _with_blob(exported, tmp_path, blob)
    with pytest.raises(serving.ExportedModelError, match=f"^{folder}/model.stablehlo: takes no arguments"):
        serving.load(str(folder))


def _function(exported, body, image=None) -> bytes:
    """``body(weights, images)`` exported for the CPU with the export's weight arguments (and its image, or ``image``)."""
    from jax import export as jax_export

    with open(os.path.join(exported, bundle.FUNCTION_FILE), "rb") as f:
        original = jax_export.deserialize(bytearray(f.read()))
    *weights, images = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in original.in_avals]
    args = (weights, images if image is None else image)
    return jax_export.export(jax.jit(body), platforms=["cpu"])(*args).serialize()


def test_a_function_of_a_fixed_batch_is_refused_at_load(exported, tmp_path):
    # Before: it loaded, and effnet-serve's warm-up (a batch of one) failed in uvicorn's start-up traceback.
    fixed = jax.ShapeDtypeStruct((2, 32, 32), jnp.uint8)
    blob = _function(exported, lambda w, x: jnp.zeros((x.shape[0],), jnp.float32) + 0.5, fixed)
    folder = _with_blob(exported, tmp_path, blob, gradcam=False)
    with pytest.raises(serving.ExportedModelError, match=f"^{folder}/model.stablehlo: takes a fixed batch of 2"):
        serving.load(str(folder))


def test_a_function_file_larger_than_any_export_is_refused_from_model_json(exported, tmp_path):
    # Before: accepted up to 256 MiB; a 128 MB function (one constant) took 10 s and 1.1 GB to load.
    big = 40 << 20
    blob = b"\0" * big
    folder = _with_blob(exported, tmp_path, blob)
    with pytest.raises(serving.ExportedModelError, match=f"model.json: bad value for 'files.function.bytes': {big}"):
        serving.load(str(folder))


def test_a_function_of_more_ops_than_an_exported_efficientnet_is_refused_before_compiling():
    # Before: a hand-made 2 MB function of 160,000 ops loaded, and took 28 s and 1.5 GB to compile.
    from effnet_jax.serving.model import MAX_FUNCTION_OPS, check_module_ops

    def module(ops):
        return "  %0 = stablehlo.constant dense<1.0> : tensor<f32>\n" + "  %1 = stablehlo.sine %0 : tensor<f32>\n" * ops

    with pytest.raises(serving.ExportedModelError, match=r"^f.stablehlo: holds 70,001 ops, more than the 65,536"):
        check_module_ops(module(70_000), "f.stablehlo")
    check_module_ops(module(MAX_FUNCTION_OPS - 1), "f.stablehlo")  # as many as the bound: accepted


def test_the_real_export_is_far_below_the_function_bounds(exported):
    from jax import export as jax_export

    from effnet_jax.serving.model import _OP, MAX_FUNCTION_OPS

    for name in (bundle.FUNCTION_FILE, bundle.GRADCAM_FILE):
        with open(os.path.join(exported, name), "rb") as f:
            blob = f.read()
        assert len(blob) < bundle.MAX_FUNCTION_BYTES // 100
        assert len(_OP.findall(jax_export.deserialize(bytearray(blob)).mlir_module())) < MAX_FUNCTION_OPS // 16


# --- functions that return no probability ---------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), 7.0, -1.0])
def test_a_function_returning_no_probability_is_an_error_naming_it(exported, tmp_path, value):
    # Before: NaN, 7 or -1 was passed on as P(PNEUMONIA) (NaN: effnet-serve's 500 with a traceback per request).
    blob = _function(exported, lambda w, x: jnp.where(x.astype(jnp.float32).sum(axis=(1, 2)) > 0, value, 0.5))
    folder = _with_blob(exported, tmp_path, blob)
    model = serving.load(str(folder))
    assert model.run(np.zeros((1, 32, 32), np.uint8)).tolist() == [0.5]
    with pytest.raises(serving.ExportedModelError, match=f"^{folder}/model.stablehlo: returned 1 value"):
        model.run(np.ones((2, 32, 32), np.uint8) * np.array([0, 1], np.uint8)[:, None, None])


SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "effnet_jax", "data", "sample")


def _sample_jpeg() -> bytes:
    folder = os.path.join(SAMPLE, "validation", "NORMAL")
    with open(os.path.join(folder, sorted(os.listdir(folder))[0]), "rb") as f:
        return f.read()


def _nan_for_non_zero(weights, images):
    return jnp.where(images.astype(jnp.float32).sum(axis=(1, 2)) > 0, jnp.nan, 0.5)


def test_effnet_serve_answers_a_function_returning_nan_in_one_line(exported, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from effnet_jax.server import Settings, create_app

    folder = _with_blob(exported, tmp_path, _function(exported, _nan_for_non_zero))
    with TestClient(create_app(serving.load(str(folder)), Settings(max_batch=1, max_queue=2))) as client:
        answer = client.post("/v1/predict", files=[("file", ("a.jpeg", _sample_jpeg()))])
    assert answer.status_code == 500
    # The reason, naming the server's folder, goes to the server's log; the client is told no path.
    assert (
        answer.json()["error"]
        == "scoring failed: the model returned no usable probabilities (the server's log says why)"
    )
    assert str(tmp_path) not in answer.text


def test_effnet_predict_and_effnet_serve_say_a_function_returning_nan_in_one_line(exported, tmp_path):
    folder = _with_blob(exported, tmp_path, _function(exported, _nan_for_non_zero))
    jpeg = tmp_path / "a.jpeg"
    jpeg.write_bytes(_sample_jpeg())
    done = run_module("effnet_jax.cli.predict", f"--exported={folder}", str(jpeg))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"effnet-predict: error: {folder}/model.stablehlo: returned")
    # NaN for every image: effnet-serve refuses it before uvicorn starts (its warm-up would fail in a traceback).
    folder = _with_blob(exported, tmp_path / "all", _function(exported, lambda w, x: jnp.full(x.shape[:1], jnp.nan)))
    with socket.socket() as free:  # a port anyone may listen on: serve checks it before loading the model
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    done = run_module("effnet_jax.cli.serve", f"--exported={folder}", f"--port={port}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"effnet-serve: error: {folder}/model.stablehlo: returned")


# --- functions that take much memory per image ----------------------------------------------------


def _wide(weights, images):
    # 16 MiB of float32 per image, under the budget for one image, not for a batch of them.
    planes = (
        jnp.ones((images.shape[0], 2048, 2048), jnp.float32)
        * images.astype(jnp.float32).mean(axis=(1, 2))[:, None, None]
    )
    return planes.mean(axis=(1, 2)) / 255.0


def test_an_exported_function_is_called_on_as_many_images_as_fit_the_budget(exported, tmp_path, monkeypatch):
    # Before: the whole batch in one call: 32 images of such a function took 32 times the budget.

    from effnet_jax import serving

    monkeypatch.setenv("EFFNET_JAX_DECODE_BUDGET", "64M")
    model = serving.load(str(_with_function(exported, tmp_path, _wide)))
    assert model.max_batch == 4
    calls = []
    call = model._call
    model._call = lambda weights, images: calls.append(len(images)) or call(weights, images)
    images = np.arange(10 * 32 * 32, dtype=np.int64).reshape(10, 32, 32).astype(np.uint8)
    probs = model.run(images)
    assert calls == [4, 4, 2]
    np.testing.assert_allclose(probs, images.astype(np.float32).mean(axis=(1, 2)) / 255.0, rtol=1e-6)


def test_the_real_export_is_called_in_one_piece_for_any_usual_batch(exported):
    from effnet_jax import serving

    model = serving.load(exported)
    assert model.max_batch >= 256  # its largest tensor for one image is a few hundred KB at 32 px
    calls = []
    call = model._call
    model._call = lambda weights, images: calls.append(len(images)) or call(weights, images)
    assert model.run(np.zeros((64, 32, 32), np.uint8)).shape == (64,) and calls == [64]
