"""Run a model over a question set in batches through an answer function, and judge the answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from ..errors import MossVLError
from .questions import Question
from .report import EvalReport, build_report

AnswerFn = Callable[[list[Question]], list[str]]


def evaluate(
    questions: Sequence[Question],
    answer_fn: AnswerFn,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalReport:
    """Answer `questions` in batches of `batch_size` with `answer_fn` (one string per question) and score them."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    predictions: list[str] = []
    with tqdm(total=len(questions), desc="eval", unit="question", disable=not progress) as bar:
        for start in range(0, len(questions), batch_size):
            batch = list(questions[start : start + batch_size])
            answers = list(answer_fn(batch))
            if len(answers) != len(batch) or not all(isinstance(a, str) for a in answers):
                raise MossVLError(
                    f"the answer function returned {len(answers)} answers of types "
                    f"{sorted({type(a).__name__ for a in answers})} for a batch of {len(batch)} questions "
                    f"(first id {batch[0].id!r}); expected one string per question"
                )
            predictions += answers
            bar.update(len(batch))
    return build_report(questions, predictions)
