"""effnet-serve: an exported model behind HTTP, with a review page (needs the ``serve`` extra).

    effnet-serve --exported=DIR [--host=127.0.0.1] [--port=8000] [--max_batch=16] [--max_wait_ms=5]

DIR is a folder written by effnet-export, checked as ``effnet_jax.serving.load`` checks it.
POST /v1/predict takes multipart ``file`` fields (JPEG, PNG, DICOM) and answers effnet-predict's
records with the model's identity; GET / is the review page; GET /v1/model and GET /healthz
describe the model and the server. Requests arriving together are scored in one call (up to
--max_batch images, the first waiting at most --max_wait_ms for others). Uploads over a
budget get 413, other file types 415, unreadable files 422, a body slower than
--body_timeout_s 408, and a full queue, no free --max_preparing slot within
--prepare_wait_s or bodies past --max_receiving_mib 503 (docs/serving.md). The decoded-size budget is EFFNET_JAX_DECODE_BUDGET's (docs/untrusted-inputs.md).

Exit status: 0 stopped by Ctrl-C; 1 the folder could not be loaded; 2 bad usage or the
``serve`` extra is not installed.
"""

from __future__ import annotations

import socket
import sys

from absl import app, flags

from effnet_jax.cli.command import define_once, run_command
from effnet_jax.cli.logs import quiet_unless_verbose, show_our_logs
from effnet_jax.output_files import printable_line

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS):
    """Defines this command's flags (once); see cli/predict.py for why not at import."""
    d = lambda define, name, default, help: define_once(define, name, default, help, flag_values=fv)
    d(flags.DEFINE_string, "exported", None, "Directory written by effnet-export: the model to serve.")
    d(flags.DEFINE_string, "host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    d(flags.DEFINE_integer, "port", 8000, "TCP port to listen on.")
    d(flags.DEFINE_integer, "max_batch", 16, "Most images scored in one call of the exported function.")
    d(flags.DEFINE_float, "max_wait_ms", 5.0, "How long the first waiting image waits for others to join its batch.")
    d(flags.DEFINE_integer, "max_queue", 256, "Most images waiting to be scored; a request that does not fit gets 503.")
    d(flags.DEFINE_integer, "max_files", 16, "Most files in one request (more: 413).")
    d(flags.DEFINE_integer, "max_file_kib", 32 << 10, "Most KiB in one uploaded file (more: 413).")
    d(flags.DEFINE_integer, "max_megapixels", 50, "Most megapixels a JPEG or PNG header may declare (more: 413).")
    d(flags.DEFINE_integer, "max_connections", 1024, "Open connections beyond this get 503 from the server itself.")
    d(
        flags.DEFINE_float,
        "body_timeout_s",
        60.0,
        "Seconds a request's body may take to arrive after its headers (slower or stalled: 408, connection closed).",
    )
    d(
        flags.DEFINE_integer,
        "max_preparing",
        4,
        "Most requests whose uploads are read and decoded at once (memory: about this x (max_file_kib + the "
        "decoded-size budget)); others wait.",
    )
    d(
        flags.DEFINE_float,
        "prepare_wait_s",
        10.0,
        "Seconds a request waits for one of the --max_preparing slots before it gets 503 with Retry-After.",
    )
    d(
        flags.DEFINE_integer,
        "max_receiving_mib",
        2048,
        "Most MiB of request bodies received and held at once (spooled to disk until answered); a request "
        "that would pass it gets 503 with Retry-After.",
    )


def main(argv):
    show_our_logs()
    quiet_unless_verbose()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.exported:
        raise app.UsageError("--exported (a folder written by effnet-export) is required.")
    try:
        from effnet_jax import server
    except ImportError as e:
        print(f"effnet-serve: error: {e.name} is missing: pip install 'effnet_jax[serve]'", file=sys.stderr)
        return 2
    from effnet_jax import serving

    # Checked before the model loads: uvicorn would refuse them only after the warm-up compiled every batch size.
    if not 1 <= FLAGS.port <= 65535:
        print(f"effnet-serve: error: --port={FLAGS.port}: expected a TCP port from 1 to 65535", file=sys.stderr)
        return 1
    if FLAGS.max_connections < 1:
        print(f"effnet-serve: error: --max_connections={FLAGS.max_connections}: expected at least 1", file=sys.stderr)
        return 1
    problem = listen_problem(FLAGS.host, FLAGS.port) or limit_problem(FLAGS)
    if problem:
        print(f"effnet-serve: error: {problem}", file=sys.stderr)
        return 1
    try:
        settings = server.Settings(
            max_batch=FLAGS.max_batch,
            max_wait_ms=FLAGS.max_wait_ms,
            max_queue=FLAGS.max_queue,
            max_files=FLAGS.max_files,
            max_file_bytes=FLAGS.max_file_kib << 10,
            max_pixels=FLAGS.max_megapixels * 1_000_000,
            body_timeout_s=FLAGS.body_timeout_s,
            max_preparing=FLAGS.max_preparing,
            prepare_wait_s=FLAGS.prepare_wait_s,
            max_receiving_bytes=FLAGS.max_receiving_mib << 20,
        )
        model = serving.load(FLAGS.exported)
        # One image through the function before the server starts: the warm-up would fail inside uvicorn's
        # start-up (a traceback) on a function that returns no probabilities. Compiled once, reused by it.
        import numpy as np

        model.run(np.zeros((1, model.image_size, model.image_size), np.uint8))
    except ValueError as e:  # ExportedModelError, or a limit below 1
        print(f"effnet-serve: error: {e}", file=sys.stderr)
        return 1
    print(f"effnet-serve: {FLAGS.exported} on http://{FLAGS.host}:{FLAGS.port}/ (Ctrl-C stops)", file=sys.stderr)
    server.serve(model, FLAGS.host, FLAGS.port, settings, limit_concurrency=FLAGS.max_connections)
    return 0


# Flags that set a server.Settings field in other units: checked here, so a refusal names the flag
# and its value (Settings would say max_pixels=0 for --max_megapixels=0).
_SCALED = ("max_file_kib", "max_megapixels", "max_receiving_mib")


def limit_problem(values) -> str | None:
    """Why the scaled limit flags cannot make server.Settings (said with the flags), or None."""
    for name in _SCALED:
        if values[name].value < 1:
            return f"--{name}={values[name].value}: expected at least 1"
    largest = values.max_files * values.max_file_kib * 1024 + (1 << 20)  # Settings.max_request_bytes
    if values.max_files >= 1 and values.max_receiving_mib << 20 < largest:
        return (
            f"--max_receiving_mib={values.max_receiving_mib}: expected at least one largest request "
            f"(--max_files x --max_file_kib + 1 MiB = {-(-largest >> 20)} MiB)"
        )
    return None


def listen_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on ``host:port`` (a name that resolves to nothing, a port in use), or None.

    uvicorn finds out only after the model loaded and every batch size compiled, and says it without the flag.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn binds it: a port left in TIME_WAIT by a closed server is no bar, a listening one is.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except (OSError, UnicodeError, ValueError) as e:  # UnicodeError: a label over 63 characters; ValueError: a NUL
        why = getattr(e, "strerror", None) or e
        return f"--host={printable_line(host)} --port={port}: cannot listen there ({why})"
    return None


def run():
    """Console-script entry point."""
    run_command(__doc__, define_flags, main)


if __name__ == "__main__":
    run()
