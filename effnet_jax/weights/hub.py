"""Downloads weight files from the Hugging Face hub (timm's ``timm/<variant>.<tag>`` repos)."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlparse

from effnet_jax.weights.readers import WeightFileError

_HUB_NAME = re.compile(r"^(hf[-_]hub:)?[\w.-]+/[\w.-]+$")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_name(name: str) -> bool:
    return bool(_HUB_NAME.match(name)) and not os.path.exists(name)


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
    for filename in WEIGHT_FILES:
        path = try_to_load_from_cache(name.split(":", 1)[-1], filename)
        if isinstance(path, str):
            return path
    return None


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
    reason = _offline_reason()
    errors = []
    for filename in WEIGHT_FILES:
        try:
            return hf_hub_download(repo_id, filename, local_files_only=reason is not None)
        except Exception as e:  # noqa: BLE001  huggingface_hub raises many types; report them all
            errors.append(f"{filename}: {type(e).__name__}")
    where = f"offline ({reason}) and not in the local cache" if reason else "download failed"
    raise WeightFileError(f"Cannot get hub weights {name!r}: {where} [{'; '.join(errors)}]. " + how_to)
