"""Where the data sets are when the command line does not say: the one environment variable EFFNET_DATA_DIR.

    EFFNET_DATA_DIR/chest_xray/            {train,val,test}/{NORMAL,PNEUMONIA}: data.manual_dir
    EFFNET_DATA_DIR/chest_xray_external/   {NORMAL,PNEUMONIA}: data.external (optional)

Configs call ``folder`` for their defaults; ``--config.data.manual_dir`` and
``--config.data.external`` on the command line override whatever it gives. Nothing here
looks at where the repository or a config file lives.
"""

from __future__ import annotations

import os

ENV = "EFFNET_DATA_DIR"


def folder(name: str, required: bool = False) -> str | None:
    """``$EFFNET_DATA_DIR/name`` when the variable is set and the folder exists; else None.

    With ``required``, a set variable whose folder is missing is an error naming both.
    """
    root = os.environ.get(ENV)
    if not root:
        return None
    path = os.path.join(os.path.expanduser(root), name)
    if os.path.isdir(path):
        return path
    if required:
        raise ValueError(f"{ENV}={root}: no folder {name}/ inside (expected {path})")
    return None


def no_external_set_line(data) -> str | None:
    """The warning a run without external data carries (trainer log, model card); None when it has some.

    ``data`` is the config's ``data`` section (a ConfigDict, or the dict of a saved config.json).
    """
    if data.get("external"):
        return None
    return (
        "NO EXTERNAL SET: the checkpoint is chosen on validation (carved from train/) and the operating "
        "threshold is the training prior, so the README's external numbers do not apply to this run; "
        "give one with --config.data.external=\"('DIR',)\" --config.select_split=external"
    )
