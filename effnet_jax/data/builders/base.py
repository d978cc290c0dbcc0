"""A GeneratorBasedBuilder base that works with the bare tensorflow-datasets install."""

import inspect

import tensorflow_datasets as tfds
from etils import epath


class Builder(tfds.core.GeneratorBasedBuilder):
    """GeneratorBasedBuilder whose code_path does not need the importlib_resources package.

    TFDS 4.9's default code_path checks `importlib_resources.abc.Traversable`, a package
    that tensorflow-datasets does not install; our builders live in ordinary files.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))
