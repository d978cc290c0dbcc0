"""Experiment configs for effnet-train: each imports the default schema (``configs.default``) and sets
only what it changes. Load one by path: ``--config=configs/<name>.py``; the CLI makes ``configs``
importable so a config can import a sibling (``from configs import default``)."""
