"""A run's calibration file: the temperature fitted at one of its checkpoints, written and read back.

The fitting is ``effnet_jax.metrics.calibration``; this module holds the file and the rule
that a temperature applies only to the checkpoint it was fitted on.
"""

from __future__ import annotations

import json
import os

from effnet_jax.metrics.calibration import Calibration
from effnet_jax.output_files import UnsafeOutputError, replaced_output
from effnet_jax.runs import values
from effnet_jax.runs.layout import CALIBRATION, Layout
from effnet_jax.weights.readers import read_json_file

# What fit_temperature returns: T in [0.01, 100] (exp of its log bounds, with room for rounding).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01 * (1 - 1e-9), 100.0 * (1 + 1e-9)


def write_calibration(layout: Layout, calibration: Calibration) -> str:
    """Writes the run's calibration file (replacing an earlier one); returns its path."""
    path = layout.calibration
    if os.path.isdir(path) and not os.path.islink(path):  # os.replace cannot put a file over a folder
        raise UnsafeOutputError(f"{path}: a folder, not a calibration file; refusing to replace it")
    # A reader never sees half a file; nothing is written through a link planted at either name.
    with replaced_output(path) as f:
        json.dump(calibration.to_json(), f, indent=2)
        f.write("\n")
    return path


def read_calibration(layout: Layout) -> Calibration | None:
    """The run's calibration file, or None when it has none; a malformed file is a ValueError naming it."""
    path = layout.calibration
    if not os.path.isfile(path):
        return None
    try:
        blob = read_json_file(path, 1 << 20)  # size, FIFOs, nesting: one line naming the file
        # Each of the type effnet-eval writes: a step of 3.7 (or "3") would be taken as step 3 and its
        # temperature applied there; a NaN ECE or a negative count would be shown as fact.
        where = f"{path}: "
        calibration = Calibration(
            temperature=values.number(blob["temperature"], where + "temperature"),
            fitted_on=values.text(blob["fitted_on"], where + "fitted_on"),
            step=values.count(blob["step"], where + "step"),
            ece_before=values.number(blob["ece_before"], where + "ece_before"),
            ece_after=values.number(blob["ece_after"], where + "ece_after"),
            n=values.count(blob["n"], where + "n"),
            tta=values.text(blob.get("tta", "none"), where + "tta"),
        )
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as e:  # OverflowError: int(1e400)
        why = str(e).removeprefix(f"{path}: ")  # read_json_file's own line names the file already
        raise ValueError(f"{path}: not a valid calibration file ({type(e).__name__}: {why})") from None
    # The fitter's range (metrics.calibration.fit_temperature): a temperature of 5e-324 sends every logit to
    # infinity (NaN probabilities past two classes), one of 1e308 prints as 300 digits.
    if not MIN_TEMPERATURE <= calibration.temperature <= MAX_TEMPERATURE:
        raise ValueError(
            f"{path}: temperature={calibration.temperature!r}: expected a number from 0.01 to 100 "
            "(the range effnet-eval fits in)"
        )
    return calibration


def temperature_for_step(calibration: Calibration | None, step: int) -> tuple[float, str]:
    """The temperature to apply to checkpoint ``step`` given the run's ``calibration``, and a line saying why.

    T applies only to the checkpoint it was fitted on: another checkpoint's probabilities
    are left as they are (T = 1), and the line says so.
    """
    if calibration is None:
        return 1.0, f"uncalibrated (no {CALIBRATION})"
    if calibration.step != step:
        return 1.0, f"uncalibrated ({CALIBRATION} was fitted at step {calibration.step}, not {step})"
    return calibration.temperature, (
        f"temperature {calibration.temperature:.4f} ({CALIBRATION}: fitted on {calibration.fitted_on}, "
        f"{calibration.n} images, ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f})"
    )
