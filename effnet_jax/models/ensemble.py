"""A seed ensemble: several fine-tuned EfficientNets of one architecture, their logits averaged.

The members' variables are stacked along a new leading axis (one tree, the same paths
as one model's) and the network runs over them with ``jax.vmap``, so an ensemble is
applied like a single model: ``ensemble.apply(variables, images, train=False)`` returns
``(B, num_classes)`` logits, the mean of the members' logits. For two classes the mean of
the logits is the mean of the members' log-odds (a geometric mean of their odds), which
ranked external X-rays better than the mean of their probabilities and better than a
weight soup (docs/experiments/README.md).

Inference only: ``train=True`` is refused (members are trained one by one, then stacked).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from effnet_jax.models.efficientnet import EfficientNet


@dataclasses.dataclass(frozen=True)
class LogitEnsemble:
    """``size`` members of ``member``'s architecture whose variables carry a leading axis of ``size``."""

    member: EfficientNet
    size: int

    def __post_init__(self):
        if self.size < 2:
            raise ValueError(f"an ensemble needs at least two members, got {self.size}")

    # What inference code reads of a model: forwarded to the member architecture.
    @property
    def variant(self):
        return self.member.variant

    @property
    def num_classes(self) -> int:
        return self.member.num_classes

    @property
    def depthwise_impl(self) -> str:
        return self.member.depthwise_impl

    @property
    def dtype(self):
        return self.member.dtype

    def clone(self, **changes) -> LogitEnsemble:
        """The same ensemble over a member architecture with ``changes`` (as ``nn.Module.clone``)."""
        return dataclasses.replace(self, member=self.member.clone(**changes))

    def apply(self, variables: dict, x, train: bool = False, features_only: bool = False, **kwargs):
        """Mean logits over the members; with ``features_only`` each member's features, stacked on axis 0."""
        if train or kwargs.get("mutable"):
            raise ValueError("a LogitEnsemble is for inference: train its members one by one, then stack them")
        leading = {(jnp.shape(leaf) or (None,))[0] for leaf in jax.tree.leaves(variables)}
        if leading != {self.size}:
            raise ValueError(
                f"ensemble variables must all have a leading axis of {self.size} (one entry per member); "
                f"got leading sizes {sorted(leading, key=str)}"
            )
        outputs = jax.vmap(lambda v: self.member.apply(v, x, train=False, features_only=features_only, **kwargs))(
            variables
        )
        if features_only:
            return outputs
        return outputs.mean(axis=0)


def stack_members(member_variables: list[dict]) -> dict:
    """One variables tree for a ``LogitEnsemble``: the members' trees stacked leaf by leaf on a new axis 0."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *member_variables)


def member_axis(model) -> int | None:
    """The number of members when ``model`` is an ensemble (its variables lead with that axis), else None."""
    return model.size if isinstance(model, LogitEnsemble) else None
