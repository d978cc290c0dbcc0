"""Experiment configs for effnet-train: each starts from the default schema (``effnet_jax.train.config``) and
sets only what it changes. Load one by path: ``--config=configs/<name>.py``; a config that builds on a sibling
loads it by path too (``effnet_jax.train.config.sibling_config``), so no ``sys.path`` entry is needed."""
