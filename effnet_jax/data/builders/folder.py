"""TFDS builder for a folder of class folders (``data.name='folder'``, ``effnet_jax.data.folders``)."""

import tensorflow_datasets as tfds

from effnet_jax.data import folders
from effnet_jax.data.builders import chest_xray


class ClassFoldersConfig(chest_xray.ChestXrayConfig):
    """chest_xray's storage, bad-image and exclusion settings, plus the task: classes, rules, patient rule.

    The task and the folder's resolved path name the config (``identity``): another
    folder or another mapping prepares its own records, never reusing these.
    """

    def __init__(self, *, class_names, rules=(), patient_id_pattern=None, identity="", **kwargs):
        super().__init__(**kwargs)
        self.name = f"{self.name}_task{identity}"
        self.class_names = tuple(class_names)
        self.rules = tuple(tuple(r) for r in rules)
        self.patient_id_pattern = patient_id_pattern or None
        self.description += f", classes {list(self.class_names)}"


class ClassFolders(chest_xray.ChestXray):
    """A task's own X-rays: image, label, patient id and file name per example."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Point data.manual_dir at the folder holding train/<CLASS>/<image>."
    BUILDER_CONFIGS = []

    def _class_names(self):
        return self.builder_config.class_names

    def _scan(self, raw):
        config = self.builder_config
        return folders.scan(
            {
                "manual_dir": str(raw),
                "class_from_name": config.rules,
                "class_names": config.class_names,
                "patient_id_pattern": config.patient_id_pattern,
                "follow_links": config.follow_links,
            }
        )

    def _about(self) -> dict:
        return {"description": f"X-rays in class folders, classes {list(self._class_names())}."}

    def _extra_features(self) -> dict:
        return {}

    def _extra_fields(self, file_name: str, cls: str) -> dict:
        return {"patient_id": folders.patient_of(file_name, cls, self.builder_config.patient_id_pattern)}
