"""Downloads weight files from the Hugging Face hub (timm's ``timm/<variant>.<tag>`` repos)."""

from __future__ import annotations

import os
import re
import reprlib
import socket
import stat
from urllib.parse import urlparse

import effnet_jax.limits as limits
from effnet_jax.weights.readers import WeightFileError

# owner/name as the hub allows them: letters, digits, "_", "." and "-", neither ".." nor "--" inside,
# neither "." nor "-" first or last (so no part is "." or ".."; huggingface_hub refuses the rest later).
_HUB_PART = r"(?!.*(?:\.\.|--))\w(?:[\w.-]*\w)?"
_HUB_NAME = re.compile(rf"(?:hf[-_]hub:)?{_HUB_PART}/{_HUB_PART}", re.ASCII)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_REF_BYTES = 1024  # a cached ref holds a 40-character commit hash
_COMMIT_HASH = re.compile(rb"[0-9a-f]{40}")  # what huggingface_hub writes there


def is_hub_name(name: str) -> bool:
    return bool(_HUB_NAME.fullmatch(name)) and not os.path.exists(name)


def _offline_reason() -> str | None:
    """Why the hub cannot be reached, found at once (huggingface_hub itself retries for ~25 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"cannot resolve {host} ({e})"
    return None


def cached_file(name: str) -> str | None:
    """The local path of hub repo ``name``'s weight file when the Hugging Face cache holds it, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id = name.split(":", 1)[-1]
    _check_ref(repo_id)
    for filename in WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return _inside_cache(path, repo_id)
    return None


def _repo_cache(repo_id: str) -> str:
    """The folder of hub repo ``repo_id`` in the Hugging Face cache (``HF_HUB_CACHE``, ``HF_HOME``)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"))


def _check_ref(repo_id: str) -> None:
    """huggingface_hub reads the cache's ``refs/main`` whole and joins what it holds to cache paths: one that is no
    commit hash is refused, naming it.

    The cache may be shared or copied from elsewhere; a sparse ref of 10 GB took 23 GB before the OOM killer,
    and one holding ``../x`` failed as a bare ValueError inside huggingface_hub.
    """
    try:
        folder = _repo_cache(repo_id)
        st = os.lstat(os.path.join(folder, "refs", "main"))
    except (OSError, ValueError):  # no ref; or a name that is no repo id, which huggingface_hub refuses itself
        return
    ref = os.path.join(folder, "refs", "main")
    fix = f"remove {folder} to download the weights again"
    if stat.S_ISLNK(st.st_mode):  # huggingface_hub writes a file; a link would have any file read as the ref
        raise WeightFileError(f"{ref}: a link, not the commit hash file of a Hugging Face cache; {fix}")
    if not stat.S_ISREG(st.st_mode):  # huggingface_hub reads a ref only when it is a file
        return
    if st.st_size > MAX_REF_BYTES:
        raise WeightFileError(f"{ref}: {st.st_size:,} bytes, not the commit hash a Hugging Face cache ref holds; {fix}")
    try:
        held = limits.read_regular_file(ref, MAX_REF_BYTES, follow_symlinks=False)
    except (OSError, ValueError) as e:  # gone, unreadable, or no longer a small regular file
        reason = e.strerror if isinstance(e, OSError) else "it changed while being read"
        raise WeightFileError(f"{ref}: cannot read the Hugging Face cache ref ({reason}); {fix}") from None
    if not _COMMIT_HASH.fullmatch(held):
        shown = reprlib.repr(held.decode("ascii", "backslashreplace"))
        raise WeightFileError(f"{ref}: holds {shown}, not the commit hash a Hugging Face cache ref holds; {fix}")


def _inside_cache(path: str, repo_id: str) -> str:
    """``path``, refused (WeightFileError) when it leads out of the repo's cache folder: a link planted in a
    shared or copied cache (``snapshots/<hash>/model.safetensors -> ~/secret``) would have any file read."""
    folder = os.path.realpath(_repo_cache(repo_id))
    target = os.path.realpath(path)
    if os.path.commonpath([folder, target]) != folder:
        raise WeightFileError(
            f"{path}: a link to {target}, outside the Hugging Face cache folder {folder}; not read (remove "
            "the link to download the weights again, or pass a local weight file)"
        )
    return path


def download(name: str) -> str:
    """Returns a local path to the weights of hub repo ``name`` (cached by huggingface_hub)."""
    repo_id = name.split(":", 1)[-1]
    how_to = (
        "Download the weights elsewhere and pass the local file instead, e.g. "
        "pretrained='/path/to/model.safetensors' or effnet-convert --input FILE."
    )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise WeightFileError(
            f"Hub name {name!r} needs huggingface_hub: pip install 'effnet_jax[hub]'. " + how_to
        ) from e
    _check_ref(repo_id)
    reason = _offline_reason()
    errors = []
    for filename in WEIGHT_FILES:
        try:
            path = hf_hub_download(repo_id, filename, local_files_only=reason is not None)
        except Exception as e:  # noqa: BLE001  huggingface_hub raises many types; report them all
            errors.append(f"{filename}: {type(e).__name__}")
            continue
        return _inside_cache(path, repo_id)
    where = f"offline ({reason}) and not in the local cache" if reason else "download failed"
    raise WeightFileError(f"Cannot get hub weights {name!r}: {where} [{'; '.join(errors)}]. " + how_to)
