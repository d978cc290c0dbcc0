"""Hostile inputs, round 3, serving: exported weights sized before they are read, FIFOs swapped in
after a check, and effnet-serve's slow clients and concurrent uploads.

Each case failed before the fix beside it (a 128 MiB file read whole to be refused, an open that
blocked forever, a request body awaited forever, every upload decoded at once) and is asserted
here as the documented behaviour (docs/serving.md, docs/untrusted-inputs.md).
"""

import contextlib
import errno
import io
import json
import os
import shutil
import socket
import stat
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from effnet_jax import limits, serving
from effnet_jax.serving import bundle

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "effnet_jax", "data", "sample")


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


# --- weights.npz: declared sizes before the read --------------------------------------------------

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


# --- limits.read_regular_file: a FIFO swapped in after the check -----------------------------------


def _in_thread(fn, timeout=10):
    """``fn()``'s result or exception from a thread, or ``"blocked"`` when it has not returned within ``timeout``."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["value"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return out.get("value", "blocked")


def test_a_fifo_swapped_in_after_the_stat_does_not_block_the_reader(tmp_path, monkeypatch):
    regular = tmp_path / "scan.jpeg"
    regular.write_bytes(b"\xff\xd8\xff" + b"\0" * 64)
    fifo = tmp_path / "swapped.jpeg"
    os.mkfifo(fifo)
    # The race, made certain: any stat of the path sees the regular file it was a moment ago.
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(regular if str(p) == str(fifo) else p, *a, **k))
    try:
        for reader, error in ((limits.read_regular_file, limits.BudgetError), (serving.read_image, ValueError)):
            result = _in_thread(lambda: reader(str(fifo)))
            assert result != "blocked", f"{reader.__name__} blocked opening a FIFO"
            assert isinstance(result, error) and str(result) == f"{fifo}: not a regular file (a FIFO, device or folder)"
    finally:
        monkeypatch.undo()
        # Unblocks a reader left blocked in open() (before the fix), so no thread stays behind.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert limits.read_regular_file(str(regular)) == regular.read_bytes()


def test_links_are_followed_only_where_the_callers_contract_says(tmp_path, exported):
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


# --- effnet-serve: slow bodies and concurrent uploads ---------------------------------------------


def _jpeg() -> bytes:
    folder = os.path.join(SAMPLE, "validation", "NORMAL")
    with open(os.path.join(folder, sorted(os.listdir(folder))[0]), "rb") as f:
        return f.read()


class _GatedModel:
    """The model, with ``prepare_bytes`` counting how many run at once and holding each until ``gate`` opens."""

    def __init__(self, model):
        self._model = model
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def prepare_bytes(self, data, name):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            assert self.gate.wait(60)
            return self._model.prepare_bytes(data, name)
        finally:
            with self.lock:
                self.now -= 1


def _wait_until(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed(model):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax.server import BackgroundServer, Settings, create_app

    app = create_app(model, Settings(max_batch=1, body_timeout_s=0.3))
    with BackgroundServer(app) as url:
        host, port = url.split("//")[1].split(":")
        with socket.create_connection((host, int(port))) as client:
            client.settimeout(30)
            client.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            answer = b""
            while chunk := client.recv(65536):  # held open forever before; now closed after the 408
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in head.lower()
        assert json.loads(body) == {
            "error": "the request body (1,000 bytes announced) did not arrive within 0.3 s (effnet-serve --body_timeout_s)"
        }
        # A body that does arrive is scored as before.
        answer = httpx.post(url + "/v1/predict", files=[("file", ("x.jpeg", _jpeg()))], timeout=60)
        assert answer.status_code == 200, answer.text


def test_uploads_are_prepared_at_most_max_preparing_at_once_and_others_wait_in_turn(model):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax.server import BackgroundServer, Settings, create_app

    gated = _GatedModel(model)
    app = create_app(gated, Settings(max_batch=1, max_preparing=2, prepare_wait_s=60))
    jpeg = _jpeg()
    with BackgroundServer(app) as url:

        def post():
            return httpx.post(url + "/v1/predict", files=[("file", ("x.jpeg", jpeg))], timeout=120)

        threads = [threading.Thread(target=lambda k=k: answers.__setitem__(k, post())) for k in range(6)]
        answers = {}
        for thread in threads:
            thread.start()
        _wait_until(lambda: gated.now == 2)
        time.sleep(0.3)  # six requests are in; before, all six were decoding at once
        assert gated.now == 2 and httpx.get(url + "/healthz").json()["preparing"] == 2
        gated.gate.set()
        for thread in threads:
            thread.join(120)
    assert sorted(a.status_code for a in answers.values()) == [200] * 6
    assert gated.most == 2


def test_a_request_with_no_preparation_slot_in_time_gets_503_with_retry_after(model):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax.server import BackgroundServer, Settings, create_app

    gated = _GatedModel(model)
    app = create_app(gated, Settings(max_batch=1, max_preparing=1, prepare_wait_s=0.2))
    jpeg = _jpeg()
    with BackgroundServer(app) as url:
        first = {}
        thread = threading.Thread(
            target=lambda: first.update(
                answer=httpx.post(url + "/v1/predict", files=[("file", ("a.jpeg", jpeg))], timeout=120)
            )
        )
        thread.start()
        try:
            _wait_until(lambda: gated.now == 1)
            answer = httpx.post(url + "/v1/predict", files=[("file", ("b.jpeg", jpeg))], timeout=60)
        finally:
            gated.gate.set()
            thread.join(120)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"] == (
            "busy: 1 request(s) already preparing their uploads and no slot freed within 0.2 s "
            "(effnet-serve --max_preparing, --prepare_wait_s); retry shortly"
        )
        assert first["answer"].status_code == 200
        # The slot is free again: the next request is scored.
        assert httpx.post(url + "/v1/predict", files=[("file", ("c.jpeg", jpeg))], timeout=60).status_code == 200
    assert gated.most == 1


def _noise_png(side: int) -> bytes:
    """A grey PNG of random pixels: incompressible, so its size is about ``side**2`` bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_bodies_held_at_once_are_bounded_and_a_request_past_the_allowance_gets_503(model):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax.server import BackgroundServer, Settings, create_app

    gated = _GatedModel(model)
    settings = Settings(max_batch=1, max_files=1, max_file_bytes=2 << 20, max_receiving_bytes=3 << 20)
    assert settings.max_request_bytes == settings.max_receiving_bytes  # one largest request fits
    app = create_app(gated, settings)
    png = _noise_png(1300)  # about 1.6 MiB: two of them pass the 3 MiB allowance
    assert 1.5 * (1 << 20) < len(png) < 2 << 20
    with BackgroundServer(app) as url:
        first = {}
        thread = threading.Thread(
            target=lambda: first.update(
                answer=httpx.post(url + "/v1/predict", files=[("file", ("a.png", png))], timeout=120)
            )
        )
        # A small body still fits beside the held one: admitted, it waits at the gate as the first does.
        small = threading.Thread(
            target=lambda: first.update(
                small=httpx.post(url + "/v1/predict", files=[("file", ("c.jpeg", _jpeg()))], timeout=120)
            )
        )
        thread.start()
        try:
            _wait_until(lambda: gated.now == 1)  # the first body is received and held
            held = httpx.get(url + "/healthz").json()["receiving_bytes"]
            assert len(png) < held < len(png) + 1024  # its Content-Length: the file and the multipart framing
            answer = httpx.post(url + "/v1/predict", files=[("file", ("b.png", png))], timeout=60)
            small.start()
            _wait_until(lambda: gated.now == 2)
        finally:
            gated.gate.set()
            thread.join(120)
            if small.is_alive():
                small.join(120)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"].startswith(f"busy: {held:,} bytes of request bodies already being received")
        assert "(effnet-serve --max_receiving_mib); retry shortly" in answer.json()["error"]
        assert first["small"].status_code == 200
        assert first["answer"].status_code == 200
        assert httpx.get(url + "/healthz").json()["receiving_bytes"] == 0  # released after each answer
        assert httpx.post(url + "/v1/predict", files=[("file", ("b.png", png))], timeout=60).status_code == 200


def test_the_new_limits_are_flags_checked_and_documented():
    from absl import flags

    from effnet_jax.cli import serve
    from effnet_jax.server import Settings

    own = flags.FlagValues()
    serve.define_flags(own)
    docs = open(os.path.join(os.path.dirname(SAMPLE), "..", "..", "docs", "serving.md")).read()
    for name, default in (("body_timeout_s", 60.0), ("max_preparing", 4), ("prepare_wait_s", 10.0)):
        assert own[name].default == default == getattr(Settings(), name)
        assert f"`--{name}`" in docs
    assert own["max_receiving_mib"].default << 20 == Settings().max_receiving_bytes
    assert "`--max_receiving_mib`" in docs
    with pytest.raises(ValueError, match=r"^max_receiving_bytes=1048576: expected at least one largest request"):
        Settings(max_receiving_bytes=1 << 20)
    with pytest.raises(ValueError, match=r"^body_timeout_s=0: expected a positive number of seconds$"):
        Settings(body_timeout_s=0)
    with pytest.raises(ValueError, match=r"^max_preparing=0: expected at least 1$"):
        Settings(max_preparing=0)
    with pytest.raises(ValueError, match=r"^prepare_wait_s=-1: expected >= 0$"):
        Settings(prepare_wait_s=-1)
