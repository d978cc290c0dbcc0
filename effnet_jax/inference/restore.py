"""Restoring a run's checkpoint for inference: config, run record, model and variables on one device."""

from __future__ import annotations

import dataclasses

import ml_collections
from etils import epath

from effnet_jax.models import EfficientNet, build_model, get_variant
from effnet_jax.train import state as state_lib
from effnet_jax.train.checkpointing import Checkpointer, checkpoint_dir, resolve_step
from effnet_jax.train.run_record import RunRecord


@dataclasses.dataclass
class Restored:
    """A checkpoint ready for inference. ``model.variant.mean/std`` are the run's normalisation."""

    config: ml_collections.ConfigDict
    run: RunRecord
    model: EfficientNet
    variables: dict
    step: int


def restore_for_inference(workdir: str, checkpoint: str | int = "best", use_ema: bool = True) -> Restored:
    """The checkpoint ``checkpoint`` of the run in ``workdir``, on the first local device.

    ``checkpoint``: 'best' (by the run's ``best_metric``; the latest if none was
    evaluated), 'latest' or a step number. ``variables`` are the EMA weights when
    the run kept them and ``use_ema``. Works on any number of devices, whatever the
    run was trained on. The run record gives the image size and normalisation the
    run trained with (runs saved before run records existed: their config's).
    """
    if not epath.Path(checkpoint_dir(workdir)).is_dir():
        raise FileNotFoundError(
            f"no checkpoints in workdir {workdir!r}: {checkpoint_dir(workdir)} does not exist; train first with "
            f"`effnet-train --config=... --workdir={workdir}`"
        )
    ckpt = Checkpointer(workdir, best_metric=None, async_save=False, read_only=True)
    try:
        config = ckpt.restore_config(resolve_step(ckpt, "latest", workdir))
    finally:
        ckpt.close()
    # Reopen with the run's own best metric so 'best' means what the run meant.
    ckpt = Checkpointer(
        workdir,
        best_metric=config.get("best_metric"),
        best_mode=config.get("best_mode", "max"),
        async_save=False,
        read_only=True,
    )
    try:
        step = resolve_step(ckpt, checkpoint, workdir)
        config = ckpt.restore_config(step)
        run = ckpt.restore_run(step)
        saved = ckpt.restore_state_as_saved(step)
    finally:
        ckpt.close()
    if run is None:
        run = RunRecord.from_legacy_config(config, get_variant(config.model.name))
    # The module alone: the variables come from the checkpoint, so nothing is initialised (or compiled).
    model = build_model(config.model.name, num_classes=state_lib.num_classes(config), **state_lib.model_kwargs(config))
    model = model.clone(variant=dataclasses.replace(model.variant, mean=tuple(run.mean), std=tuple(run.std)))
    variables = state_lib.inference_variables(saved, use_ema=use_ema)
    return Restored(config=config, run=run, model=model, variables=variables, step=step)
