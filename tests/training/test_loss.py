"""The decision-weighted fine-tuning loss: which tokens are decisions, the weighted sum, its normaliser, and a run
of `mossvl finetune` that uses it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mossvl.constants import IGNORE_INDEX
from mossvl.errors import ConfigError
from mossvl.training.finetune import train
from mossvl.training.loss import decision_positions, decision_weighted_loss

X = IGNORE_INDEX


def test_decision_positions_are_the_first_of_each_supervised_stretch():
    labels = torch.tensor([[X, X, 5, X, X, 7, 8, 9, X, 3], [4, 4, X, 6, X, X, X, X, X, X]])
    assert decision_positions(labels).nonzero().tolist() == [[0, 2], [0, 5], [0, 9], [1, 0], [1, 3]]


@pytest.fixture
def logits_and_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 10, 11, generator=generator)
    labels = torch.tensor([[X, X, 5, X, X, 7, 8, 9, X, 3], [X, 4, 4, X, 6, X, X, X, X, X]])
    return logits, labels


def test_weight_one_is_the_plain_next_token_cross_entropy(logits_and_labels):
    logits, labels = logits_and_labels
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=X)
    loss = decision_weighted_loss(1.0)(SimpleNamespace(logits=logits), labels)
    torch.testing.assert_close(loss, plain)


def test_decisions_count_weight_times_over_the_supervised_token_count(logits_and_labels):
    logits, labels = logits_and_labels
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp(min=0), reduction="none")
    token_loss = token_loss * (targets != X)
    decisions = [(0, 1), (0, 4), (0, 8), (1, 0), (1, 3)]  # target positions: labels shifted by one
    extra = sum(token_loss[b, t] for b, t in decisions)
    outputs = SimpleNamespace(logits=logits)
    expected = (token_loss.sum() + 3 * extra) / 8
    torch.testing.assert_close(decision_weighted_loss(4.0)(outputs, labels), expected)
    # Under gradient accumulation the Trainer passes the supervised-token count of all accumulated batches.
    torch.testing.assert_close(
        decision_weighted_loss(4.0)(outputs, labels, num_items_in_batch=16), expected * 8 / 16
    )


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_a_weight_that_is_not_positive_is_refused(weight):
    with pytest.raises(ConfigError, match="decision_loss_weight must be positive"):
        decision_weighted_loss(weight)


def test_finetune_with_a_decision_weight_trains_and_logs_the_weighted_loss(make_args):
    plain = train(*make_args("plain", max_steps=2))
    weighted = train(*make_args("weighted", max_steps=2, decision_loss_weight=5.0))
    logs = [json.loads((out / "trainer_state.json").read_text())["log_history"] for out in (plain, weighted)]
    first_loss = [log[0]["loss"] for log in logs]
    assert first_loss[1] > first_loss[0]  # same first batch, same weights: only the decisions count more


def test_bad_weight_fails_before_the_model_loads(make_args):
    with pytest.raises(ConfigError, match="decision_loss_weight"):
        train(*make_args(decision_loss_weight=0.0))
