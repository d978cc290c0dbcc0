"""A GeneratorBasedBuilder base that works with the bare tensorflow-datasets install."""

import inspect
import logging

import tensorflow_datasets as tfds
from etils import epath

log = logging.getLogger("effnet_jax.data")


class Builder(tfds.core.GeneratorBasedBuilder):
    """GeneratorBasedBuilder whose code_path does not need the importlib_resources package.

    TFDS 4.9's default code_path checks `importlib_resources.abc.Traversable`, a package
    that tensorflow-datasets does not install; our builders live in ordinary files.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size,
    # ...)" to stdout before preparing and a bold line after; our builders read local files
    # (or fetch one npz themselves), so those sizes are never known. One log line each instead.
    def _log_download_bytes(self) -> None:
        log.info(
            "preparing %s (%s) once into %s; later runs reuse it", self.name, self.builder_config.name, self.data_dir
        )

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)
