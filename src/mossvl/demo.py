"""`python -m mossvl.demo` (`make demo`): the shipped demo model answers the bundled sample questions on the CPU.

Each question of ``assets/samples/questions.json`` goes through the path of ``mossvl ask MEDIA... QUESTION``: the
query that ``mossvl ask`` builds, answered by a streamed ``mossvl.chat`` on the model from ``mossvl.load()``. The
answer is judged as ``mossvl eval`` judges it. The exit status is 0 even when an answer is wrong: this is a demonstration, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .data.synthetic import SAMPLES_DIR


def _media_names(question) -> str:
    return ", ".join(Path(path).name for path in question.media_paths())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mossvl.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped demo model)")
    parser.add_argument(
        "--questions",
        type=Path,
        default=SAMPLES_DIR / "questions.json",
        help="question file (default: the bundled samples)",
    )
    args = parser.parse_args(argv)

    from .cli.ask import build_query
    from .evaluation import load_questions, score_answer
    from .inference.api import chat, load

    started = time.perf_counter()
    model, processor = load(args.model)
    questions = load_questions(args.questions, check_media=True)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"MOSS-VL demo model: {params / 1e6:.1f}M parameters, loaded in {time.perf_counter() - started:.1f} s\n"
    )

    correct = 0
    for question in questions:
        print(f"[{_media_names(question)}] {question.question}")
        print("  answer:   ", end="", flush=True)
        answer = ""
        query = build_query([*question.media_paths(), question.question])
        for delta in chat(model, processor, query, stream=True, max_new_tokens=16):
            answer += delta
            print(delta, end="", flush=True)
        ok = score_answer(question, answer).correct
        correct += ok
        print(f"\n  expected: {question.answer}  {'(correct)' if ok else '(WRONG)'}\n")
    elapsed = time.perf_counter() - started
    print(f"{correct}/{len(questions)} correct in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
