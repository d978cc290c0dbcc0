"""One training job end to end: train (one run, or a soup / seed ensemble of seeds), then calibrate and describe it.

``effnet-train`` parses flags and calls ``run_experiment(config, workdir)``; a notebook or a
test can call it the same way. After training, on process 0 alone: temperature scaling
when the config asks (``config.calibrate``), then the model card, which reads what the
workdir now holds. Neither failing fails the job: each is reported as a warning.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from effnet_jax import runs
from effnet_jax.inference.evaluation import calibrate_checkpoint
from effnet_jax.metrics.calibration import Calibration
from effnet_jax.reporting.model_card import write_model_card
from effnet_jax.runs import layout
from effnet_jax.train.loop import train_and_evaluate
from effnet_jax.train.soup import soup_seeds, train_soup


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What ``run_experiment`` made; ``finished`` is False when soup members stopped before their last step."""

    workdir: str
    finished: bool = True
    soup: dict | None = None  # soup.json's content, for a soup or seed ensemble
    calibration: Calibration | None = None
    calibration_path: str | None = None
    card: str | None = None  # the model card's path
    warnings: tuple[str, ...] = ()

    def summary(self) -> list[str]:
        """What a person reads when the job ends (warnings aside): the fitted temperature, where the outputs are."""
        if not self.finished:
            members = layout.Layout(self.workdir).members
            return [
                f"members in {members}/ stopped before their last step; no soup yet: run the same command to finish them"
            ]
        lines = []
        c = self.calibration
        if c is not None:
            lines.append(
                f"temperature {c.temperature:.4f} fitted on {c.fitted_on} at step {c.step} "
                f"(ECE {c.ece_before:.4f} -> {c.ece_after:.4f}): {self.calibration_path}"
            )
        made = ""
        if self.soup:
            kind = "seed ensemble" if self.soup.get("combine") == "logits" else "soup"
            made = (
                f"{kind} of {len(self.soup['members'])} seeds at step {self.soup['step']} "
                f"(members in {layout.MEMBERS}/, {layout.SOUP}); "
            )
        names = f"{layout.CHECKPOINTS}/, {layout.METRICS}, {layout.TENSORBOARD}/, {layout.MODEL_CARD}"
        lines.append(f"outputs in {self.workdir} ({made}{names})")
        return lines


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> Outcome:
    """Trains ``config`` in ``workdir`` (resuming what is there), then calibrates and writes the model card.

    With ``config.soup_seeds`` > 1 it trains that many seeds under ``WORKDIR/members/`` and
    combines them (``train.soup.train_soup``). Training errors propagate; calibration and
    model card failures become ``warnings``.
    """
    soup = None
    if soup_seeds(config) > 1:
        soup = train_soup(config, workdir)
        if soup is None:
            return Outcome(workdir=workdir, finished=False)
    else:
        train_and_evaluate(config, workdir)
    if jax.process_index() != 0:
        return Outcome(workdir=workdir, soup=soup)
    warnings = []
    calibration = calibration_path = None
    if config.get("calibrate", False):
        split = config.get("select_split", "validation")
        try:
            run = runs.open(workdir, "best")
            calibration = calibrate_checkpoint(run, split, progress=config.get("progress_bar", True))
            calibration_path = run.layout.calibration
        except (OSError, ValueError) as e:
            warnings.append(f"no temperature fitted on {split}: {e}")
    card = None
    try:
        card = write_model_card(runs.open(workdir, checkpoint=None))
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.append(f"could not write the model card in {workdir}: {type(e).__name__}: {e}")
    return Outcome(
        workdir=workdir,
        soup=soup,
        calibration=calibration,
        calibration_path=calibration_path,
        card=card,
        warnings=tuple(warnings),
    )
