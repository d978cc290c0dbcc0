"""effnet-serve's requests and uploads from any client, and the flags that bound them.

Requests are made here to the tiny export of tests/conftest.py (or to a stand-in model where none
need load). A body that does not arrive, more uploads than may be prepared or held at once,
multipart bodies and names crafted to trip the parser, a query value of another type, and an upload
no check foresaw are each an HTTP error of one line naming the file or parameter, never a 500 with a
traceback, and the server stays up; its limits are flags checked before the model loads
(docs/serving.md, docs/untrusted-inputs.md).
"""

import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import types

import crafted_fixtures as crafted
import numpy as np
import pytest
from data_fixtures import jpeg
from dicom_fixtures import radiograph, write_dicom
from PIL import Image

from effnet_jax.data import imaging
from effnet_jax.server import uploads
from effnet_jax.server.app import Settings

# --- slow bodies and concurrent uploads -----------------------------------------------------------


SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "effnet_jax", "data", "sample")


def _sample_jpeg() -> bytes:
    folder = os.path.join(SAMPLE, "validation", "NORMAL")
    with open(os.path.join(folder, sorted(os.listdir(folder))[0]), "rb") as f:
        return f.read()


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
        answer = httpx.post(url + "/v1/predict", files=[("file", ("x.jpeg", _sample_jpeg()))], timeout=60)
        assert answer.status_code == 200, answer.text


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


def test_uploads_are_prepared_at_most_max_preparing_at_once_and_others_wait_in_turn(model):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax.server import BackgroundServer, Settings, create_app

    gated = _GatedModel(model)
    app = create_app(gated, Settings(max_batch=1, max_preparing=2, prepare_wait_s=60))
    jpeg = _sample_jpeg()
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
    jpeg = _sample_jpeg()
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
                small=httpx.post(url + "/v1/predict", files=[("file", ("c.jpeg", _sample_jpeg()))], timeout=120)
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


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_client_leaving_before_its_announced_body_leaves_no_traceback(exported):
    pytest.importorskip("fastapi")
    import httpx

    from effnet_jax import serving
    from effnet_jax.server.app import BackgroundServer, Settings, create_app

    app = create_app(serving.load(exported), Settings(max_batch=1))
    seen, ours = _Records(), logging.getLogger("effnet_jax.server")
    with BackgroundServer(app) as url:
        loggers = (logging.getLogger("uvicorn.error"), ours)
        level = ours.level
        ours.setLevel(logging.INFO)
        for logger in loggers:
            logger.addHandler(seen)
        try:
            host, port = url.split("//")[1].split(":")
            with socket.create_connection((host, int(port))) as client:
                client.sendall(
                    b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
                )
                time.sleep(0.3)  # the server now waits for the rest of the body
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any("disconnected" in r.getMessage() for r in seen.records):
                time.sleep(0.05)
            assert httpx.get(f"{url}/healthz", timeout=10).json()["status"] == "ok"
        finally:
            for logger in loggers:
                logger.removeHandler(seen)
            ours.setLevel(level)
    assert any("disconnected" in r.getMessage() for r in seen.records)
    assert not [r for r in seen.records if r.exc_info or "Exception in ASGI" in r.getMessage()]


# --- request bodies and multipart names -----------------------------------------------------------


def _multipart(parts, boundary=b"b", epilogue=b"") -> bytes:
    out = b""
    for headers, body in parts:
        out += b"--" + boundary + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body + b"\r\n"
    return out + b"--" + boundary + b"--\r\n" + epilogue


def _disposition(name=b"file", filename=b"a.jpeg") -> bytes:
    named = b'Content-Disposition: form-data; name="' + name + b'"'
    return named + (b'; filename="' + filename + b'"' if filename is not None else b"")


@pytest.fixture(scope="module")
def client(model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from effnet_jax.server import Settings, create_app

    with TestClient(create_app(model, Settings(max_batch=1, max_queue=2)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("field", ["filename", "name"])
def test_an_upload_whose_charset_fails_on_a_name_is_a_400(client, field):
    # Before: starlette decodes part names with the body's charset and catches only UnicodeDecodeError:
    # idna's UnicodeError on "xn--abc-" was a 500 with a traceback.
    disposition = _disposition(filename=b"xn--abc-") if field == "filename" else _disposition(name=b"xn--abc-")
    body = _multipart([([disposition], _sample_jpeg())])
    answer = client.post(
        "/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b; charset=idna"}
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "not a readable multipart/form-data body (a part's name: UnicodeError)"}


@pytest.mark.parametrize(
    "body, content_type, status, error",
    [
        (
            _multipart([([_disposition(b"x", None)], b"1")] * 5000),
            "multipart/form-data; boundary=b",
            400,
            "Too many fields",
        ),
        (
            _multipart([([_disposition(filename=b"a" * 100_000)], b"\xff\xd8\xff")]),
            "multipart/form-data; boundary=b",
            400,
            "Invalid multipart data",
        ),
        (
            _multipart([([_disposition()] + [b"X-A: 1"] * 5000, b"\xff\xd8\xff")]),
            "multipart/form-data; boundary=b",
            400,
            "Invalid multipart data",
        ),
        (
            _multipart([([_disposition(), b"Content-Type: multipart/mixed; boundary=c"], _multipart([], b"c"))]),
            "multipart/form-data; boundary=b",
            415,
            "a.jpeg: not a JPEG, PNG or DICOM file",
        ),
        (b"&".join([b"file=1"] * 100_000), "application/x-www-form-urlencoded", 400, "Too many fields"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 422, "expected one or more multipart 'file' fields"),
        (
            _multipart([([_disposition(filename=b"scan.zip")], b"PK\x03\x04" + b"\0" * 64)]),
            "multipart/form-data; boundary=b",
            415,
            "scan.zip: not a JPEG, PNG or DICOM file",
        ),
        (
            _multipart([([_disposition()], b"\xff\xd8\xff")], b"b" * 300),
            "multipart/form-data; boundary=" + "b" * 300,
            400,
            "Invalid multipart data",
        ),
    ],
    ids=[
        "5000-fields",
        "100k-filename",
        "5000-part-headers",
        "nested-multipart",
        "urlencoded-100k-fields",
        "deep-json",
        "zip-upload",
        "300-byte-boundary",
    ],
)
def test_hostile_request_bodies_are_refused_in_one_line(client, body, content_type, status, error):
    answer = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert answer.status_code == status and error in answer.json()["error"]


def test_an_uploads_name_is_only_echoed_escaped(client):
    name = b"../../../../etc/passwd\x1b[2J"
    answer = client.post(
        "/v1/predict",
        content=_multipart([([_disposition(filename=name)], _sample_jpeg())]),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert answer.status_code == 200 and answer.json()["records"][0]["file"] == "../../../../etc/passwd?[2J"


# --- uploads the checks refuse --------------------------------------------------------------------


MANY = imaging.MAX_HEADER_ITEMS + 10


def test_an_upload_of_too_many_header_items_is_a_413_before_pillow_opens_it():
    for name, data, kind in [
        ("x.jpeg", crafted.grey_jpeg()[:2] + b"\xff\xfe\x00\x02" * MANY + crafted.grey_jpeg()[2:], "JPEG")
    ]:
        with pytest.raises(uploads.UploadError, match=f"^{name}: a JPEG of more than 65,536") as refusal:
            uploads.check_header(data, name, kind, 50_000_000)
        assert refusal.value.status == uploads.PAYLOAD_TOO_LARGE
    with pytest.raises(uploads.UploadError, match="^x.png: a PNG of more than 65,536 chunks"):
        uploads.check_header(crafted.grey_png(pre=crafted.png_chunk(b"prVt", b"") * MANY), "x.png", "PNG", 50_000_000)


def _flat_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 7).save(out, format="PNG")
    return out.getvalue()


def _patched(path, old: bytes, new: bytes) -> bytes:
    data = open(path, "rb").read()
    assert data.count(old) == 1
    return data.replace(old, new)


@pytest.fixture(scope="module")
def upload_client(model):
    from fastapi.testclient import TestClient

    from effnet_jax.server import Settings, create_app

    with TestClient(create_app(model, Settings(max_batch=2, max_wait_ms=1))) as test_client:
        yield test_client


def test_uploads_no_check_foresaw_are_422_naming_the_file_not_500(upload_client, tmp_path, monkeypatch):
    from effnet_jax.serving.model import ExportedModel

    # An image longer than a stored JPEG holds, and a DICOM of a made-up transfer syntax: both were 500s.
    dcm = _patched(write_dicom(tmp_path / "x.dcm", radiograph()), b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.0\0")
    for name, data, expected in [
        ("strip.png", _flat_png(100_000, 1), "strip.png: an image of 100000x1 pixels"),
        ("scan.dcm", dcm, "scan.dcm: DICOM TransferSyntaxUID '1.2.3.4.5.6.7.8.9.0' is not a transfer syntax"),
    ]:
        answer = upload_client.post("/v1/predict", files=[("file", (name, data))])
        assert answer.status_code == 422 and answer.json()["error"].startswith(expected)
    # A decoder failing in a way no check foresaw: the upload is unprocessable, the server stays up.
    monkeypatch.setattr(ExportedModel, "prepare_bytes", lambda *a: (_ for _ in ()).throw(RuntimeError("decoder bug")))
    answer = upload_client.post("/v1/predict", files=[("file", ("ok.jpeg", jpeg(1)))])
    assert answer.status_code == 422
    assert answer.json() == {"error": "ok.jpeg: cannot be read as an image (RuntimeError)"}
    monkeypatch.undo()
    assert upload_client.get("/healthz").json()["status"] == "ok"
    assert upload_client.post("/v1/predict", files=[("file", ("ok.jpeg", jpeg(1)))]).status_code == 200


# --- the query ------------------------------------------------------------------------------------


def _client(tmp_path, has_gradcam=True):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from effnet_jax.server import create_app

    # A stand-in for a loaded model: a query refused by FastAPI never reaches it (no start-up runs).
    (tmp_path / "model.json").write_text("{}")
    model = types.SimpleNamespace(
        directory=str(tmp_path),
        class_names=("NORMAL", "PNEUMONIA"),
        threshold=0.5,
        temperature=1.0,
        has_gradcam=has_gradcam,
        info={"threshold": {"rule": "training_prior"}},
    )
    return TestClient(create_app(model), raise_server_exceptions=False)


@pytest.fixture
def stand_in_client(tmp_path):
    return _client(tmp_path)


@pytest.mark.parametrize(
    "value, shown",
    [("maybe", "maybe"), ("", ""), ("%1b%5b31m" + "x" * 200, "?[31m" + "x" * 55)],
    ids=["word", "empty", "escape-code-and-long"],
)
def test_a_bad_query_value_is_one_error_line_naming_the_parameter(stand_in_client, value, shown):
    answer = stand_in_client.post(
        f"/v1/predict?gradcam={value}", content=b"", headers={"content-type": "multipart/form-data"}
    )
    assert answer.status_code == 422
    assert answer.json() == {"error": f"gradcam={shown}: Input should be a valid boolean, unable to interpret input"}


def test_a_grad_cam_asked_of_a_model_without_one_names_no_server_path(tmp_path):
    # Before: "<the server's export folder>: exported without gradcam.stablehlo; export the run again".
    answer = _client(tmp_path, has_gradcam=False).post(
        "/v1/predict?gradcam=true", content=b"", headers={"content-type": "multipart/form-data"}
    )
    assert answer.status_code == 422
    assert answer.json() == {"error": "gradcam=true: this model was exported without Grad-CAM; ask for gradcam=false"}


# --- its flags, and where it listens --------------------------------------------------------------


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


def test_serve_max_batch_above_max_queue_is_refused():
    with pytest.raises(ValueError, match=r"^max_batch=1000000000: expected at most max_queue=256"):
        Settings(max_batch=10**9)
    assert Settings(max_batch=256).max_batch == 256


def _command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"effnet_jax.cli.{module}", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("flag", ["--port=70000", "--port=0", "--port=-1", "--max_connections=0"])
def test_serve_port_and_connections_refused_before_the_model_loads(flag):
    done = _command("serve", "--exported=/nonexistent/effnet-model", flag)
    assert done.returncode == 1
    name = flag.split("=")[0]
    assert done.stderr.strip().splitlines()[-1].startswith(f"effnet-serve: error: {flag}: expected"), done.stderr
    assert "Traceback" not in done.stderr and name in done.stderr


@pytest.mark.parametrize("where", ["port-in-use", "no-such-host"])
def test_serve_refuses_an_address_it_cannot_listen_on_before_the_model_loads(monkeypatch, capsys, where):
    import socket

    from absl import flags

    from effnet_jax import serving
    from effnet_jax.cli import serve

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded (and every batch size compiled) before the address was checked")

    monkeypatch.setattr(serving, "load", load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = "127.0.0.1" if where == "port-in-use" else "256.0.0.1"
        serve.define_flags()
        flags.FLAGS(["effnet-serve", "--exported=/nonexistent/effnet-model", f"--host={host}", f"--port={port}"])
        try:
            status = serve.main(["effnet-serve"])
        finally:
            flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert err.startswith(f"effnet-serve: error: --host={host} --port={port}: cannot listen there ("), err


@pytest.mark.parametrize(
    "given, said",
    [
        (["--max_megapixels=0"], "--max_megapixels=0: expected at least 1"),
        (["--max_file_kib=0"], "--max_file_kib=0: expected at least 1"),
        (
            ["--max_file_kib=10000000"],
            "--max_receiving_mib=2048: expected at least one largest request "
            "(--max_files x --max_file_kib + 1 MiB = 156251 MiB)",
        ),
    ],
)
def test_a_limit_flag_in_other_units_is_refused_naming_the_flag(given, said):
    # Before: named by the server setting it becomes, in its units (max_pixels=0, max_receiving_bytes=2147483648).
    from absl import flags

    from effnet_jax.cli import serve

    own = flags.FlagValues()
    serve.define_flags(own)
    own(["effnet-serve", "--exported=x"])
    assert serve.limit_problem(own) is None  # the defaults
    own.unparse_flags()
    own(["effnet-serve", "--exported=x", *given])
    assert serve.limit_problem(own) == said
