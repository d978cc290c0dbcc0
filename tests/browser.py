"""A headless Chromium driven through the DevTools protocol, for tests of the review page.

The system's ``chromium`` (Debian's package; .ci/run installs it) runs with a throw-away
profile; ``Page.evaluate`` reads the DOM, ``Page.choose_files`` sets a file input as a
person choosing files would (the page sees its ``change`` event).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    """The path of an installed Chromium, or None."""
    return next((path for path in map(shutil.which, BINARIES) if path), None)


class Page:
    """One tab of a headless Chromium, spoken to over its DevTools websocket."""

    def __init__(self, binary: str, width: int = 1100, height: int = 800):
        import websocket  # websocket-client (the test extra)

        self._profile = tempfile.mkdtemp(prefix="effnet-chromium-")
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
        args += ["--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self._profile}"]
        args += [f"--window-size={width},{height}", "about:blank"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self._profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{binary} did not open its DevTools port")
            time.sleep(0.05)
        port = open(port_file).read().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
            targets = [t for t in json.load(answer) if t.get("type") == "page"]
        self._socket = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        """Calls a DevTools method; its result, or RuntimeError with the protocol's error."""
        number = next(self._ids)
        self._socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able values)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120.0):
        """Polls ``expression`` until it is truthy; returns its value (TimeoutError naming it otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never made {expression!r} true")
            time.sleep(0.1)

    def open(self, url: str) -> None:
        """Navigates to ``url`` and waits for the page to load."""
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'")

    def choose_files(self, selector: str, paths: list[str]) -> None:
        """Sets the file input ``selector`` to ``paths``, as choosing them in the file dialog does."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[os.path.abspath(p) for p in paths], nodeId=node)

    def screenshot(self, path: str) -> None:
        """Writes a PNG of the whole page."""
        import base64

        height = self.evaluate("document.documentElement.scrollHeight")
        self.send(
            "Emulation.setDeviceMetricsOverride", width=1100, height=int(height), deviceScaleFactor=1, mobile=False
        )
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        if getattr(self, "_socket", None) is not None:
            self._socket.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
