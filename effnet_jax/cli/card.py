"""The model card refresh after a command that changed what a run holds (effnet-eval, effnet-export, effnet-soup)."""

import sys

from effnet_jax import runs
from effnet_jax.reporting.model_card import write_model_card


def write_card_or_warn(workdir: str, prog: str) -> str | None:
    """Rewrites the run's model card from what it holds now; a card that cannot be written is a warning, never a failed command."""
    try:
        return write_model_card(runs.open(workdir, checkpoint=None))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{prog}: warning: could not write the model card in {workdir}: {type(e).__name__}: {e}", file=sys.stderr)
        return None
