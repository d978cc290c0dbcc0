"""effnet-serve: parity with effnet-predict, hostile uploads, batching under concurrent load, the page in Chromium."""

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from browser import Page, chromium_binary
from dicom_fixtures import radiograph, write_dicom
from helpers import REPO, run_module
from PIL import Image

from effnet_jax import limits, serving
from effnet_jax.inference.prediction_output import COLUMNS
from effnet_jax.server import Settings, batching, create_app
from effnet_jax.serving import bundle

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "effnet_jax", "data", "sample")
# The server the tests start (effnet-serve flags of the same values).
SETTINGS = Settings(max_batch=4, max_wait_ms=20, max_files=8, max_file_bytes=256 << 10, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three bundled X-rays (JPEG), one of them as a PNG at another size, and a DICOM."""
    folder = tmp_path_factory.mktemp("images")
    jpegs = [
        os.path.join(SAMPLE, "validation", c, sorted(os.listdir(os.path.join(SAMPLE, "validation", c)))[0])
        for c in ("NORMAL", "PNEUMONIA")
    ]
    jpegs.append(
        os.path.join(SAMPLE, "train", "PNEUMONIA", sorted(os.listdir(os.path.join(SAMPLE, "train", "PNEUMONIA")))[0])
    )
    png = str(folder / "resized.png")
    Image.open(jpegs[0]).convert("L").resize((120, 150)).save(png)
    dcm = str(write_dicom(folder / "scan.dcm", radiograph(90, 72), window=(2048, 2048), voi_function="LINEAR_EXACT"))
    return [*jpegs, png, dcm]


@pytest.fixture(scope="module")
def url(exported, tmp_path_factory):
    """``effnet-serve --exported=...`` in its own process (the console script's module), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = [f"--exported={exported}", f"--port={port}", f"--max_batch={SETTINGS.max_batch}"]
    flags += [f"--max_wait_ms={SETTINGS.max_wait_ms}", f"--max_files={SETTINGS.max_files}", "--max_megapixels=1"]
    flags += [f"--max_file_kib={SETTINGS.max_file_bytes >> 10}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    log = tmp_path_factory.mktemp("serve_log") / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(
            [sys.executable, "-m", "effnet_jax.cli.serve", *flags], cwd=REPO, env=env, stdout=stderr, stderr=stderr
        )
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(address + "/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    yield address
    server.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down and the command exits 0
    assert server.wait(timeout=60) == 0
    assert f"effnet-serve: {exported} on {address}/" in log.read_text()


def upload(paths):
    return [("file", (os.path.basename(p), open(p, "rb").read(), "application/octet-stream")) for p in paths]


def post(url, files, **kw):
    return httpx.post(url + "/v1/predict", files=files, timeout=120, **kw)


def test_the_api_gives_effnet_predicts_probabilities_and_the_models_identity(url, exported, images):
    proc = run_module("effnet_jax.cli.predict", f"--exported={exported}", *images)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = [json.loads(line) for line in proc.stdout.splitlines()]
    answer = post(url, upload(images))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    with open(os.path.join(exported, "model.json"), "rb") as f:
        sha = bundle.sha256(f.read())
    assert body["model"] == {
        "model_json_sha256": sha,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 44 / 64,
        "threshold_rule": "training_prior",
        "temperature": 1.0,
    }
    records = body["records"]
    assert [r["file"] for r in records] == [os.path.basename(p) for p in images]
    assert all(tuple(r) == COLUMNS[:5] for r in records)  # effnet-predict's fields, in its order
    np.testing.assert_allclose(
        [r["prob_pneumonia"] for r in records], [r["prob_pneumonia"] for r in expected], rtol=0, atol=1e-6
    )
    assert [r["label"] for r in records] == [r["label"] for r in expected]
    assert len({round(r["prob_pneumonia"], 6) for r in records}) > 1  # the images are told apart


def test_model_facts_health_and_the_page(url, model):
    facts = httpx.get(url + "/v1/model").json()
    assert facts["identity"]["threshold"] == model.threshold and facts["gradcam"] is True
    assert facts["intended_use"].startswith("Research and education only")
    assert facts["serving"]["max_batch"] == 4 and facts["serving"]["max_files"] == 8
    assert "workdir" not in facts["model"] and "manual_dir" not in facts["training"]  # the exporting host's paths
    assert facts["files"]["gradcam"]["name"] == bundle.GRADCAM_FILE
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(url + asset).status_code == 200
    # Offline: nothing is fetched from another host.
    for text in (page.text, httpx.get(url + "/static/app.js").text, httpx.get(url + "/static/style.css").text):
        assert "http://" not in text and "https://" not in text


def test_the_export_holds_a_gradcam_function_equal_to_effnet_predicts(exported, model):
    from effnet_jax import runs
    from effnet_jax.data import transforms
    from effnet_jax.inference.gradcam import make_gradcam

    with open(os.path.join(exported, "SHA256SUMS")) as f:
        assert bundle.GRADCAM_FILE in f.read()
    run = runs.open(os.path.join(os.path.dirname(exported), "run"))
    _, mean, std = run.input_spec
    pixels = np.stack(
        [
            model.prepare_file(os.path.join(SAMPLE, "validation", "PNEUMONIA", n))
            for n in sorted(os.listdir(os.path.join(SAMPLE, "validation", "PNEUMONIA")))[:1]
        ]
    )
    table = transforms.Normalizer(mean, std).table(np.zeros((1, 1), np.uint8))
    expected = make_gradcam(run.model())(run.variables(True), table[pixels])["heatmap"]
    maps = model.gradcam(pixels)
    assert maps.shape == (1, 32, 32) and maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(maps, np.asarray(expected), rtol=0, atol=1e-5)


def test_a_truncated_gradcam_function_is_refused_at_load_in_one_line(exported, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exported, folder)
    blob = (folder / bundle.GRADCAM_FILE).read_bytes()
    (folder / bundle.GRADCAM_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(serving.ExportedModelError) as info:
        serving.load(str(folder))
    assert str(info.value).startswith(f"{folder}/{bundle.GRADCAM_FILE}: does not match {folder}/model.json")


def test_the_page_asks_for_and_gets_gradcam_overlays(url, images):
    answer = post(url, upload(images[:1]), params={"gradcam": "true"})
    overlay = answer.json()["records"][0]["gradcam"]
    assert overlay.startswith("data:image/png;base64,")
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(overlay.split(",", 1)[1]))).size == (32, 32)


def png_bytes(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


def refusal(answer, status) -> str:
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert "\n" not in message
    return message


def test_hostile_uploads_are_refused_in_one_line_and_the_server_stays_up(url, images):
    jpeg = open(images[0], "rb").read()
    # Bodies over every file at its limit: refused from Content-Length, before being read.
    huge = os.urandom(SETTINGS.max_request_bytes + 1)
    message = refusal(post(url, [("file", ("huge.jpeg", huge))]), 413)
    assert message.startswith("request of ") and message.endswith(
        f"bytes, over the {SETTINGS.max_request_bytes:,} one request may have"
    )
    big = b"\xff\xd8\xff" + os.urandom(SETTINGS.max_file_bytes)
    assert refusal(post(url, [("file", ("big.jpeg", big))]), 413) == (
        f"big.jpeg: over the {SETTINGS.max_file_bytes:,} bytes one upload may have"
    )
    assert refusal(post(url, [("file", ("x.jpeg", jpeg))] * 9), 413) == "more than 8 files in one request"
    assert refusal(post(url, [("file", ("wide.png", png_bytes(1100, 1000)))]), 413) == (
        "wide.png: a PNG image of 1100x1000 pixels, over the 1,000,000 pixels one upload may have"
    )
    # Not a JPEG, PNG or DICOM (a GIF is an image, but not one this server takes); a name with escapes.
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    assert refusal(post(url, [("file", ("a.gif", gif.getvalue()))]), 415).startswith("a.gif: not a JPEG, PNG or DICOM")
    assert refusal(post(url, [("file", ("a\x1b[2J.txt", b"hello"))]), 415).startswith("a?[2J.txt: not a JPEG")
    # Corrupt: a cut JPEG, a PNG signature then noise, an empty file, a DICOM preamble without a dataset.
    assert refusal(post(url, [("file", ("cut.jpeg", jpeg[: len(jpeg) // 2]))]), 422).startswith("cut.jpeg: corrupt")
    noise = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert refusal(post(url, [("file", ("noise.png", noise))]), 422).startswith("noise.png: corrupt PNG header")
    assert refusal(post(url, [("file", ("empty.png", b""))]), 422) == "empty.png: empty file"
    assert refusal(post(url, [("file", ("bad.dcm", b"\0" * 128 + b"DICM" + b"\x02"))]), 422).startswith("bad.dcm: ")
    # One bad file refuses its request (none of it is scored); no file at all; no Content-Length.
    assert refusal(post(url, [("file", ("ok.jpeg", jpeg)), ("file", ("e.png", b""))]), 422) == "e.png: empty file"
    assert refusal(post(url, [("image", ("x.jpeg", jpeg))]), 422).startswith("expected one or more multipart 'file'")
    chunked = httpx.post(
        url + "/v1/predict", content=iter([b"--x\r\n"]), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert refusal(chunked, 411).startswith("a Content-Length header is required")
    # Still up, and still right.
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    assert post(url, upload(images[:1])).status_code == 200


def test_concurrent_clients_are_all_answered_in_batches_and_nothing_is_lost(url, model, images):
    expected = {os.path.basename(p): r["prob_pneumonia"] for p, r in zip(images, model.predict_files(images))}
    before = httpx.get(url + "/healthz").json()

    async def one(client, path):
        answer = await client.post(url + "/v1/predict", files=upload([path]))
        return path, answer

    async def main():
        limits_ = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=300, limits=limits_) as client:

            async def client_loop(k):  # 8 clients, 8 requests each, one after the other
                return [await one(client, images[(k + i) % len(images)]) for i in range(8)]

            loops = await asyncio.gather(*(client_loop(k) for k in range(8)))
            burst = await asyncio.gather(*(one(client, images[i % len(images)]) for i in range(64)))
        return [pair for loop in loops for pair in loop] + list(burst)

    answers = asyncio.run(main())
    assert len(answers) == 128 and [a.status_code for _, a in answers] == [200] * 128
    for path, answer in answers:  # each answer is its own file's, with that file's probability
        (record,) = answer.json()["records"]
        assert record["file"] == os.path.basename(path)
        assert abs(record["prob_pneumonia"] - expected[record["file"]]) <= 1e-6
    after = httpx.get(url + "/healthz").json()
    assert after["images"] - before["images"] == 128 and after["waiting"] == 0
    assert after["batches"] - before["batches"] < 128  # requests that arrived together shared a call


def test_a_request_that_does_not_fit_the_queue_gets_503_and_decoding_keeps_to_the_budget(model, images, monkeypatch):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, Settings(max_batch=1, max_queue=2))) as client:
        answer = client.post("/v1/predict", files=upload(images[:3]))
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"].startswith("overloaded: 0 image(s) already waiting, room for 2")
        assert client.post("/v1/predict", files=upload(images[:2])).status_code == 200
        monkeypatch.setenv(limits.ENV_VAR, "1M")  # the decoded-size budget, read at each check
        answer = client.post("/v1/predict", files=[("file", ("dense.png", png_bytes(800, 800)))])
        assert "over the decoded-size budget of 1,048,576 bytes" in refusal(answer, 413)


def test_images_queued_together_are_scored_in_one_call_up_to_max_batch():
    calls = []

    def score(items):
        calls.append([int(item.pixels[0, 0]) for item in items])
        return [batching.Scored(float(item.pixels[0, 0])) for item in items]

    async def main():
        batcher = batching.Batcher(score, max_batch=4, max_wait_s=0.05, max_queue=10)
        await batcher.start()
        futures = batcher.submit([batching.Item(np.full((2, 2), i, np.uint8)) for i in range(10)])
        with pytest.raises(batching.Overloaded, match="10 image"):
            batcher.submit([batching.Item(np.zeros((2, 2), np.uint8))])
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return [r.prob for r in results]

    assert asyncio.run(main()) == list(range(10))
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batching.batch_buckets(16) == (1, 2, 4, 8, 16) and batching.batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batching.bucket_split(7, (1, 2, 4, 8)) == [4, 2, 1] and batching.bucket_split(19, (1, 2, 4, 8)) == [
        8,
        8,
        2,
        1,
    ]


def test_bad_settings_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"^max_batch=0: expected at least 1$"):
        Settings(max_batch=0)


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium installed (apt-get install chromium; .ci/run does)")
def test_the_review_page_in_headless_chromium_scores_a_dropped_xray(url, images):
    expected = {r["file"]: r for r in post(url, upload(images[:3])).json()["records"]}
    with Page(chromium_binary()) as page:
        page.open(url + "/")
        assert page.wait_for("document.querySelector('#intended-use').textContent").startswith(
            "Intended use: Research and education only"
        )
        assert "PNEUMONIA when P >= 0.6875" in page.evaluate("document.querySelector('#model').textContent")
        page.choose_files("#files", images[:3])
        page.wait_for("document.querySelectorAll('#results td.prob').length === 3", timeout=300)
        rows = page.evaluate(
            "[...document.querySelectorAll('#results tbody tr')].map(tr => [tr.dataset.file, "
            "tr.querySelector('td.prob').textContent, tr.querySelector('td.label').textContent, "
            "tr.querySelector('img.gradcam').src.slice(0, 22), tr.querySelector('img.gradcam').naturalWidth])"
        )
        assert sorted(r[0] for r in rows) == sorted(expected)
        for name, prob, label, src, width in rows:
            assert prob == f"{expected[name]['prob_pneumonia']:.4f}" and label == expected[name]["label"]
            assert src == "data:image/png;base64," and width == 32
        assert page.evaluate("document.querySelector('#status').textContent") == "3 of 3 file(s) done"
        page.evaluate("document.querySelector('th[data-key=prob]').click()")  # highest P first
        shown = page.evaluate("[...document.querySelectorAll('#results td.prob')].map(td => td.textContent)")
        assert shown == sorted(shown, reverse=True)
