"""Evaluation of a model on a question set: accuracy per task type and temporal grounding error."""

from .questions import Question, load_questions
from .report import EvalReport, QuestionResult, TaskResult, build_report
from .runner import evaluate
from .scoring import Score, chance_levels, score_answer

__all__ = [
    "EvalReport",
    "Question",
    "QuestionResult",
    "Score",
    "TaskResult",
    "build_report",
    "chance_levels",
    "evaluate",
    "load_questions",
    "score_answer",
]
