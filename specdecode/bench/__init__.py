"""Spec-Bench-compatible benchmark: `specdecode bench` (see runner.py for the protocol)."""

from .methods import METHOD_NAMES, MethodName, TurnResult, parse_methods
from .metrics import MethodSummary, summarize
from .questions import Question, read_questions, select_questions
from .runner import BenchConfig, BenchRun, run_benchmark

__all__ = ["METHOD_NAMES", "BenchConfig", "BenchRun", "MethodName", "MethodSummary", "Question", "TurnResult",
           "parse_methods", "read_questions", "run_benchmark", "select_questions", "summarize"]
