"""A GeneratorBasedBuilder base that works with the bare tensorflow-datasets install."""

import inspect
import logging

import tensorflow_datasets as tfds
from etils import epath

from effnet_jax.data import prepared_files

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

    def _build_data_dir(self, given_data_dir):
        # TFDS reads the version folder's files as soon as it knows where it is (data.data_dir may be a
        # downloaded copy): they are checked first (effnet_jax.data.prepared_files).
        root, version_dir = super()._build_data_dir(given_data_dir)
        prepared_files.check_folder(version_dir, self.name, str(self.version))
        return root, version_dir

    # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size,
    # ...)" to stdout before preparing and a bold line after; our builders read local files
    # (or fetch one npz themselves), so those sizes are never known. One log line each instead.
    def _log_download_bytes(self) -> None:
        log.info(
            "preparing %s (%s) once into %s; later runs reuse it", self.name, self.builder_config.name, self.data_dir
        )

    def _log_download_done(self) -> None:
        log.info("prepared %s in %s", self.name, self.data_dir)
