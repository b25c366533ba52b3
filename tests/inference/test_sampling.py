"""Generation settings validation and per-row next-token selection."""

import pytest
import torch
from transformers import GenerationConfig

from mossvl.errors import QueryError
from mossvl.inference.sampling import GenerationSettings, RowSampler, select_next_tokens


def test_defaults_are_the_official_generate_defaults():
    settings = GenerationSettings()
    assert (settings.max_new_tokens, settings.temperature, settings.top_k, settings.top_p) == (
        1024,
        1.0,
        50,
        1.0,
    )
    assert settings.repetition_penalty == 1.0 and settings.greedy


def test_from_kwargs_layers_and_validates():
    base = GenerationSettings.from_kwargs({"max_new_tokens": 20, "stop": "END"})
    settings = GenerationSettings.from_kwargs(
        {"do_sample": True, "temperature": 0.5, "use_cache": True}, base=base
    )
    assert (settings.max_new_tokens, settings.stop, settings.temperature) == (20, ("END",), 0.5)
    assert not settings.greedy
    assert GenerationSettings.from_kwargs({"do_sample": True, "temperature": 0}).greedy
    assert GenerationSettings.from_kwargs({"stop_strings": ["a", "b"]}).stop == ("a", "b")
    with pytest.raises(QueryError, match="num_beam"):
        GenerationSettings.from_kwargs({"num_beam": 4})
    with pytest.raises(QueryError, match="top_p"):
        GenerationSettings.from_kwargs({"top_p": 1.5})


def test_greedy_rows_take_the_argmax_and_penalty_rows_their_history():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 1.9, -1.0]])
    plain = RowSampler(GenerationSettings())
    penalised = RowSampler(GenerationSettings(repetition_penalty=2.0))
    history = torch.tensor([[0, 0]])
    assert select_next_tokens([plain, penalised], [None, history], logits) == [1, 1]
    assert penalised.needs_history and not plain.needs_history


def test_sampling_follows_the_seed_and_the_filters():
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]])
    settings = GenerationSettings(do_sample=True, top_k=2, seed=7)
    draws = [RowSampler(settings)(torch.zeros(1, 0, dtype=torch.long), logits) for _ in range(3)]
    assert len(set(draws)) == 1
    sampler = RowSampler(GenerationSettings(do_sample=True, top_k=2, seed=1))
    assert {sampler(torch.zeros(1, 0, dtype=torch.long), logits) for _ in range(50)} <= {1, 2}
    nucleus = RowSampler(GenerationSettings(do_sample=True, top_k=0, top_p=0.01, seed=1))
    assert {nucleus(torch.zeros(1, 0, dtype=torch.long), logits) for _ in range(20)} == {1}


def test_sequence_bias_shifts_a_token_and_comes_from_the_generation_config():
    config = GenerationConfig(sequence_bias=[[[2], -3.0]])
    settings = GenerationSettings.from_generation_config(config)
    assert settings.sequence_bias == (((2,), -3.0),)
    sampler = RowSampler(settings)
    assert sampler.needs_history and not sampler.plain_greedy
    empty = torch.zeros(1, 0, dtype=torch.long)
    assert select_next_tokens([sampler], [empty], torch.tensor([[0.0, 1.0, 3.5]])) == [1]
    assert select_next_tokens([sampler], [empty], torch.tensor([[0.0, 1.0, 4.5]])) == [2]
    # A multi-token sequence biases its last token only after the others were generated.
    pair = RowSampler(GenerationSettings.from_kwargs({"sequence_bias": {(0, 2): 5.0}}))
    logits = torch.tensor([[0.0, 1.0, -3.0]])
    assert select_next_tokens([pair], [torch.tensor([[0]])], logits) == [2]
    assert select_next_tokens([pair], [torch.tensor([[1]])], logits) == [1]


@pytest.mark.parametrize(
    "bias, problem",
    [
        ([[2, -3.0]], r"expected \{\(token ids...\): bias\}"),
        ({(): 1.0}, "non-empty ids"),
        ({(1,): float("nan")}, "non-empty ids"),
        ({(1,): 1e9}, r"\|bias\| <= 10000"),
        ("silence", "sequence_bias='silence' is invalid"),
    ],
)
def test_bad_sequence_bias_is_refused(bias, problem):
    with pytest.raises(QueryError, match=problem):
        GenerationSettings.from_kwargs({"sequence_bias": bias})
