"""Restoring a run's checkpoint for inference: config, run record, model and variables on one device."""

from __future__ import annotations

import dataclasses

import ml_collections

from effnet_jax.models import EfficientNet
from effnet_jax.runs.checkpoints import read_checkpoint
from effnet_jax.runs.record import RunRecord
from effnet_jax.train import state as state_lib


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
    saved = read_checkpoint(workdir, checkpoint)
    # The module alone: the variables come from the checkpoint, so nothing is initialised (or compiled).
    model = state_lib.model_for_run(saved.config, saved.run)
    variables = state_lib.inference_variables(saved.state, use_ema=use_ema)
    return Restored(config=saved.config, run=saved.run, model=model, variables=variables, step=saved.step)
