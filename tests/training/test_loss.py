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


def test_choices_that_open_a_reply_count_reply_weight_times_more(logits_and_labels):
    """Token 7 plays <|silence|>: of the decisions, the targets 5, 3, 4 and 6 open replies, the 7 does not."""
    logits, labels = logits_and_labels
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp(min=0), reduction="none")
    token_loss = token_loss * (targets != X)
    replies = [(0, 1), (0, 8), (1, 0), (1, 3)]
    silence = [(0, 4)]
    decision = sum(token_loss[b, t] for b, t in replies + silence)
    opening = sum(token_loss[b, t] for b, t in replies)
    outputs = SimpleNamespace(logits=logits)
    expected = (token_loss.sum() + decision + 2 * 3 * opening) / 8
    loss = decision_weighted_loss(2.0, reply_weight=4.0, silence_id=7)(outputs, labels)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ((0.0, 1.0), "decision_loss_weight must be positive"),
        ((-1.0, 1.0), "decision_loss_weight must be positive"),
        ((1.0, 0.0), "reply_start_loss_weight must be positive"),
        ((1.0, float("nan")), "reply_start_loss_weight must be positive"),
    ],
)
def test_a_weight_that_is_not_positive_is_refused(weights, problem):
    with pytest.raises(ConfigError, match=problem):
        decision_weighted_loss(*weights, silence_id=7)


def test_a_reply_weight_needs_the_silence_token():
    with pytest.raises(ConfigError, match="needs the <|silence|> token id"):
        decision_weighted_loss(1.0, reply_weight=2.0)


def test_finetune_with_a_decision_weight_trains_and_logs_the_weighted_loss(make_args):
    plain = train(*make_args("plain", max_steps=2))
    weighted = train(*make_args("weighted", max_steps=2, decision_loss_weight=5.0))
    replies = train(*make_args("replies", max_steps=2, reply_start_loss_weight=5.0))
    logs = [
        json.loads((out / "trainer_state.json").read_text())["log_history"]
        for out in (plain, weighted, replies)
    ]
    first_loss = [log[0]["loss"] for log in logs]
    # Same first batch, same weights: only the decisions (these offline answers all open replies) count more.
    assert first_loss[1] > first_loss[0] and first_loss[2] > first_loss[0]


def test_bad_weight_fails_before_the_model_loads(make_args):
    with pytest.raises(ConfigError, match="decision_loss_weight"):
        train(*make_args(decision_loss_weight=0.0))
    with pytest.raises(ConfigError, match="reply_start_loss_weight"):
        train(*make_args(reply_start_loss_weight=-2.0))
