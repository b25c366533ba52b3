"""Fine-tuning loss in which the first supervised token of each supervised stretch counts more.

In a realtime sample every frame's tokens are unsupervised and the token after them is the model's choice: stay
silent (``<|silence|>``) or open a reply. Most supervised tokens are easy (silence on frames where nothing happens,
the rest of a reply once it has started), so that choice gets a small share of the gradient although it decides
detection and false alarms. ``decision_weighted_loss(w)`` counts each choice ``w`` times (and the ``<|silence|>``
that opens an assistant turn, the other first token of a stretch); ``w == 1`` is the plain next-token
cross-entropy of the model. ``reply_weight`` multiplies the choices that open a reply (target not ``<|silence|>``):
a stream has one of them for every few silent frames, and it is the one that must learn what to look for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..errors import ConfigError


def decision_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: supervised labels whose previous label is not supervised (the first of each stretch)."""
    supervised = labels != IGNORE_INDEX
    previous = torch.zeros_like(supervised)
    previous[:, 1:] = supervised[:, :-1]
    return supervised & ~previous


def decision_weighted_loss(
    weight: float, reply_weight: float = 1.0, silence_id: int | None = None
) -> Callable:
    """A ``compute_loss_func`` for transformers' Trainer: next-token cross-entropy summed with weight `weight` on
    `decision_positions` (times `reply_weight` where the target is not `silence_id`) and 1 elsewhere, divided by the
    number of supervised tokens (the Trainer's ``num_items_in_batch`` across gradient accumulation when given, else
    this batch's)."""
    check_loss_weights(weight, reply_weight)
    if reply_weight != 1 and silence_id is None:
        raise ConfigError("reply_start_loss_weight needs the <|silence|> token id")

    def loss(outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        targets = labels[:, 1:].to(outputs.logits.device)
        logits = outputs.logits[:, :-1].float().transpose(1, 2)  # (B, V, L-1), as cross_entropy wants
        token_loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
        supervised = targets != IGNORE_INDEX
        weights = supervised.float()
        decisions = decision_positions(targets)
        weights[decisions] = weight
        if reply_weight != 1:
            weights[decisions & (targets != silence_id)] *= reply_weight
        count = num_items_in_batch if num_items_in_batch is not None else supervised.sum()
        return (token_loss * weights).sum() / count

    return loss


def check_loss_weights(weight: float, reply_weight: float) -> None:
    """Raise ConfigError unless both weights are positive."""
    for name, value in (("decision_loss_weight", weight), ("reply_start_loss_weight", reply_weight)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
