"""The EQUAL loop: cluster documents, let a bandit pick clusters, extract QA pairs, reward by OT.

``run_extract`` is the whole job behind ``equal extract``. It is resumable: the setup (documents,
embeddings, clusters) is redone cheaply from caches when incomplete, and the rounds continue from the last
commit in ``bandit.json`` (see :mod:`equal.pipeline.rundir`). Given the same settings it is deterministic, so
an interrupted and resumed run ends with the same pairs as an uninterrupted one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from equal.config import ExtractConfig
from equal.data.io import atomic_write_json, iter_jsonl, load_npy, save_npy
from equal.data.records import Document
from equal.errors import DataError, LLMError
from equal.pipeline.rundir import RunDir

__all__ = ["ExtractSummary", "RoundInfo", "run_extract"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundInfo:
    """What a progress display gets after each committed round."""

    round: int
    documents_read: int
    budget_docs: int | None
    pairs: int
    reward: float | None
    tokens: int
    ot_distance: float | None


@dataclass(frozen=True)
class ExtractSummary:
    """The closing numbers of a run (``--json`` prints :meth:`to_dict`)."""

    run: str
    strategy: str
    rounds: int
    documents_read: int
    documents_total: int
    clusters: int
    pairs: int
    llm_requests: int
    llm_cache_hits: int
    llm_failed: int
    tokens_in: int
    tokens_out: int
    seconds: float
    ot_distance: float | None
    drops: dict[str, int] = field(default_factory=dict)
    dataset: str = ""
    report: str = ""
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------- setup


@dataclass
class _Setup:
    docs: list[Document]
    doc_emb: np.ndarray
    target_texts: list[str]
    target_emb: np.ndarray
    labels: np.ndarray
    n_clusters: int
    neighbors: list[np.ndarray]


def _read_target(config: ExtractConfig) -> list[str]:
    """Target examples as texts: an SFT file (any form) unless ``target_field`` names a text field."""
    from equal.data import read_documents, read_sft, render_text

    if config.target_field:
        res = read_documents(config.target, text_field=config.target_field, id_field=None,
                             skip_invalid=config.skip_invalid)
        return [d.text for d in res.items]
    try:
        sft = read_sft(config.target, skip_invalid=config.skip_invalid)
    except DataError as exc:
        if "text" not in str(exc) and "no valid SFT records" not in str(exc):
            raise
        res = read_documents(config.target, text_field="text", id_field=None, skip_invalid=config.skip_invalid)
        return [d.text for d in res.items]
    return [render_text(r) for r in sft.records]


def _setup(config: ExtractConfig, run: RunDir, embedder: Any, progress: Callable[[str], None]) -> _Setup:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from equal.cluster import KMeans, cluster_gaussians, neighbor_graph, pairwise_frechet
    from equal.data import chunk_documents, read_documents

    progress("reading corpus")
    res = read_documents(config.corpus, text_field=config.text_field, id_field=config.id_field,
                         skip_invalid=config.skip_invalid)
    docs = chunk_documents(res.items, config.chunk_tokens)
    if not docs:
        raise DataError("the corpus has no documents", path=config.corpus)
    target_texts = _read_target(config)
    if not target_texts:
        raise DataError("the target has no examples", path=config.target)

    emb_dir = run.embeddings
    done = run.setup_done.exists()
    doc_path, target_path = emb_dir / "documents.npy", emb_dir / "target.npy"
    if done and doc_path.exists() and target_path.exists() and run.documents.exists():
        doc_emb = np.ascontiguousarray(load_npy(doc_path, mmap=False))
        target_emb = np.ascontiguousarray(load_npy(target_path, mmap=False))
        table = pq.read_table(run.documents, columns=["id", "cluster"])
        if table.num_rows != len(docs) or table.column("id").to_pylist() != [d.id for d in docs]:
            raise DataError("the corpus changed since this run started; use a new --out or --force",
                            path=config.corpus)
        labels = np.asarray(table.column("cluster").to_numpy(), dtype=np.int64)
        neighbors = [np.asarray(n, dtype=np.int64)
                     for n in pq.read_table(run.clusters, columns=["neighbors"]).column("neighbors").to_pylist()]
        return _Setup(docs, doc_emb, target_texts, target_emb, labels, len(neighbors), neighbors)

    progress(f"embedding {len(docs)} documents")
    doc_emb = embedder.encode([d.text for d in docs], show_progress=True)
    progress(f"embedding {len(target_texts)} target examples")
    target_emb = embedder.encode(target_texts, show_progress=False)

    k = min(config.clusters, len(docs))
    progress(f"clustering into {k} clusters")
    km = KMeans(n_clusters=k, seed=config.seed).fit(doc_emb)
    labels = np.asarray(km.labels_, dtype=np.int64)
    gauss = cluster_gaussians(doc_emb, labels, k, diagonal=config.diagonal_covariance)
    dist = pairwise_frechet(gauss)
    # distance of each cluster's mean to the target's mean (NaN for an empty cluster)
    gap = np.linalg.norm(gauss.means - target_emb.astype(np.float64).mean(axis=0), axis=1)
    if config.cluster_order == "target":
        labels, gap, dist = _renumber_by(gap, labels, dist)
    neighbors = neighbor_graph(dist, config.neighbor_threshold)

    emb_dir.mkdir(parents=True, exist_ok=True)
    save_npy(doc_path, doc_emb)
    save_npy(target_path, target_emb)
    save_npy(emb_dir / "cluster_distances.npy", np.asarray(dist, dtype=np.float64))
    _write_parquet(run.documents, pa.table({
        "row": np.arange(len(docs), dtype=np.int64),
        "id": [d.id for d in docs],
        "parent_id": [str(d.meta.get("parent_id", d.id)) for d in docs],
        "chunk": np.asarray([int(d.meta.get("chunk", 0)) for d in docs], dtype=np.int64),
        "hash": [_hash(d.text) for d in docs],
        "cluster": labels,
        "chars": np.asarray([len(d.text) for d in docs], dtype=np.int64),
    }))
    sizes = np.bincount(labels, minlength=k)
    _write_parquet(run.clusters, pa.table({
        "cluster": np.arange(k, dtype=np.int64),
        "size": sizes.astype(np.int64),
        "neighbors": [n.tolist() for n in neighbors],
        "target_gap": gap,
    }))
    atomic_write_json(run.setup_done, {
        "documents": len(docs), "clusters": k, "target": len(target_texts),
        "embedder": getattr(embedder, "identity", str(embedder)), "skipped_rows": res.skipped,
    })
    return _Setup(docs, doc_emb, target_texts, target_emb, labels, k, neighbors)


def _renumber_by(
    gap: np.ndarray, labels: np.ndarray, dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber clusters by ``gap``, smallest first: new labels, and ``gap`` and ``dist`` in the new order.

    EQUAL's first round reads clusters 0, 1, 2, ... and its later ties also go to the smaller index, so with
    this numbering a run that cannot yet tell clusters apart by reward starts with the ones whose documents
    already sit nearest the target, instead of in k-means' arbitrary order. The policy itself is unchanged.
    """
    order = np.argsort(gap, kind="stable")
    rank = np.empty(len(gap), dtype=np.int64)
    rank[order] = np.arange(len(gap))
    return rank[labels], gap[order], dist[np.ix_(order, order)]


def _hash(text: str) -> str:
    from equal.data import content_hash

    return content_hash(text)


def _write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    from equal.data.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ----------------------------------------------------------------------------------------------- rounds


class _Sampler:
    """Which documents a round reads: per-cluster seeded orders (bandit strategies) or one global order."""

    def __init__(self, config: ExtractConfig, labels: np.ndarray, n_clusters: int) -> None:
        self.strategy = config.strategy
        n = len(labels)
        if self.strategy in ("equal", "uniform-clusters"):
            self.orders = []
            for c in range(n_clusters):
                members = np.flatnonzero(labels == c)
                # a child stream per cluster: the order of one cluster never depends on another's
                rng = np.random.default_rng([config.seed, 1, c])
                self.orders.append(members[rng.permutation(len(members))])
        elif self.strategy == "random":
            self.order = np.random.default_rng([config.seed, 2]).permutation(n)
        else:  # all: the corpus in its own order
            self.order = np.arange(n)

    def available(self, cursor: list[int]) -> np.ndarray:
        return np.asarray([cursor[c] < len(o) for c, o in enumerate(self.orders)], dtype=bool)


def _pick(sampler: _Sampler, policy: Any, state: dict[str, Any], config: ExtractConfig,
          limit: int) -> tuple[list[int], list[int]]:
    """Return (document rows, cluster of each) for this round, at most ``limit`` documents."""
    rows: list[int] = []
    arms: list[int] = []
    if policy is not None:
        cursor = state["cursor"]
        available = sampler.available(cursor)
        chosen = policy.select(config.clusters_per_round, available=available)
        for c in (int(a) for a in chosen):
            take = sampler.orders[c][cursor[c]: cursor[c] + config.docs_per_cluster]
            take = take[: max(0, limit - len(rows))]
            rows.extend(int(r) for r in take)
            arms.extend([c] * len(take))
    else:
        start = state["cursor_global"]
        take = sampler.order[start: start + min(limit, config.clusters_per_round * config.docs_per_cluster)]
        rows = [int(r) for r in take]
    return rows, arms


def _make_llm(config: ExtractConfig, run: RunDir) -> Any:
    from equal.llm import CachedLLM, get_llm

    if config.llm == "openai":
        base = get_llm("openai", model=config.model, base_url=config.base_url, concurrency=config.concurrency)
    else:
        kw: dict[str, Any] = {"batch_size": config.batch_size}
        if config.model:
            kw["model_path"] = config.model
        base = get_llm("local", **kw)
    return CachedLLM(base, run.llm_cache)


def _make_extractor(config: ExtractConfig, run: RunDir) -> tuple[Any, Any]:
    if config.extractor == "rules":
        from equal.extract import RuleExtractor

        return RuleExtractor(), None
    from equal.extract import LLMExtractor
    from equal.llm import GenerationParams

    llm = _make_llm(config, run)
    params = GenerationParams(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed)
    extractor = LLMExtractor(llm, params=params, max_pairs=config.max_pairs, refine=config.refine,
                             prompt_style=config.resolved_prompt_style)
    return extractor, llm


def _warm_up(llm: Any) -> None:
    """Load a local model in a background thread while the corpus is embedded.

    Dequantising the bundled GGUF the first time is mostly single-threaded Python and numpy work, the
    embedding mostly torch kernels that release the GIL, so on a cold machine the two overlap well. The
    first ``generate`` waits for the thread (``LocalLLM.load`` is thread-safe); a failure here is only
    logged, because that ``generate`` loads again and raises it where it can be reported.
    """
    base = getattr(llm, "llm", llm)
    if not callable(getattr(base, "load", None)):
        return

    def load() -> None:
        try:
            base.load()
        except Exception:
            logger.debug("background model load failed; retried on first use", exc_info=True)

    threading.Thread(target=load, name="equal-llm-warm-up", daemon=True).start()


def _new_state(config: ExtractConfig, n_clusters: int, policy: Any) -> dict[str, Any]:
    return {
        "round": 0,
        "cursor": [0] * n_clusters,
        "cursor_global": 0,
        "documents_read": 0,
        "pairs": 0,
        "policy": policy.state_dict() if policy is not None else None,
        "ledger": {"requests": 0, "cache_hits": 0, "failed": 0, "tokens_in": 0, "tokens_out": 0,
                   "seconds": 0.0},
        "drops": {},
        "finished": False,
    }


def _make_policy(config: ExtractConfig, setup: _Setup) -> Any:
    from equal.bandit import make_policy

    if config.strategy == "equal":
        kw: dict[str, Any] = {}
        if config.alpha is not None:
            kw["alpha"] = config.alpha
        return make_policy(config.policy, setup.n_clusters, seed=config.seed, neighbors=setup.neighbors, **kw)
    if config.strategy == "uniform-clusters":
        return make_policy("uniform", setup.n_clusters, seed=config.seed)
    return None


def _budget_left(config: ExtractConfig, state: dict[str, Any], n_docs: int) -> int:
    """Documents this run may still read (0 when any budget is spent)."""
    left = n_docs - state["documents_read"]
    if config.budget_docs is not None:
        left = min(left, config.budget_docs - state["documents_read"])
    if config.budget_tokens is not None:
        used = state["ledger"]["tokens_in"] + state["ledger"]["tokens_out"]
        if used >= config.budget_tokens:
            return 0
    return max(left, 0)


def run_extract(
    config: ExtractConfig,
    out: str | Path,
    *,
    force: bool = False,
    on_status: Callable[[str], None] | None = None,
    on_round: Callable[[RoundInfo], None] | None = None,
    max_rounds: int | None = None,
) -> ExtractSummary:
    """Run (or resume) ``equal extract`` into the run directory ``out``.

    Parameters
    ----------
    config : ExtractConfig
        The settings; stored as ``run.toml``.
    out : path
        The run directory.
    force : bool, default=False
        Restart a directory that holds a run with other settings (its LLM cache is kept).
    on_status, on_round : callables, optional
        Progress callbacks (the CLI draws its progress bar from them).
    max_rounds : int, optional
        Stop after this many rounds in this call (the run stays resumable); for tests and stepping.

    Returns
    -------
    ExtractSummary
    """
    from equal.data.decontam import NGramIndex
    from equal.data.dedup import exact_dedup, near_dedup
    from equal.data.qa import QAPair
    from equal.embed import CachedEmbedder, get_embedder
    from equal.ot import distance, distance_batch

    status = on_status or (lambda _msg: None)
    t0 = time.perf_counter()
    run = RunDir(Path(out))
    resumed = run.prepare(config, force=force)
    extractor, llm = (None, None)
    if config.extractor == "llm" and not (resumed and _read_state(run).get("finished")):
        extractor, llm = _make_extractor(config, run)
        _warm_up(llm)
    embedder = CachedEmbedder(get_embedder(config.embedder))
    setup = _setup(config, run, embedder, status)
    sampler = _Sampler(config, setup.labels, setup.n_clusters)
    policy = _make_policy(config, setup)

    if resumed:
        state = _read_state(run)
        run.truncate_logs(state)
        if policy is not None and state.get("policy") is not None:
            policy.load_state_dict(state["policy"])
    else:
        state = _new_state(config, setup.n_clusters, policy)
        for path in (run.qa, run.rounds):
            path.write_bytes(b"")  # exist from the start: a run may keep no pair for a while
        run.commit(state)

    # everything kept so far: dedup keys, texts and embeddings (served from the embedding cache)
    kept: list[QAPair] = [QAPair.from_record(r) for r in iter_jsonl(run.qa)] if run.qa.exists() else []
    kept_texts = [p.render_text() for p in kept]
    kept_emb = (embedder.encode(kept_texts) if kept_texts
                else np.zeros((0, setup.target_emb.shape[1]), dtype=np.float32))
    decontam = NGramIndex.from_texts(setup.target_texts, n=config.decontam_ngram)
    n_docs = len(setup.docs)
    budget_docs = n_docs if config.strategy == "all" else config.budget_docs
    rounds_here = 0

    while not state["finished"]:
        limit = _budget_left(config, state, n_docs)
        rows, arms = _pick(sampler, policy, state, config, limit) if limit > 0 else ([], [])
        if not rows:
            state["finished"] = True
            run.commit(state)
            break
        if max_rounds is not None and rounds_here >= max_rounds:
            break
        if extractor is None:
            status("loading the extractor")
            extractor, llm = _make_extractor(config, run)
        r = state["round"]
        docs = [setup.docs[i] for i in rows]
        clusters_of = arms if arms else [int(setup.labels[i]) for i in rows]
        result = extractor.extract(docs, cluster=clusters_of, round=r)
        if result.failed_docs:
            errors = [c.error for c in result.completions if c.error][:3]
            raise LLMError(
                f"{len(result.failed_docs)} of {len(docs)} extraction requests failed in round {r} "
                f"(first errors: {errors}); nothing of this round was committed and every completed request "
                "is cached: rerun the same command to resume"
            )

        # filter: exact duplicates, near duplicates (against everything kept), target contamination
        drops: Counter[str] = Counter(result.drops)
        cand = list(result.pairs)
        texts = [p.render_text() for p in cand]
        keep = np.ones(len(cand), dtype=bool)
        if cand:
            all_texts = kept_texts + texts
            exact = exact_dedup(all_texts)[len(kept_texts):]
            near = near_dedup(all_texts, threshold=config.near_dup_threshold, seed=config.seed)[len(kept_texts):]
            dirty = decontam.contaminated(texts)
            drops["exact_duplicate"] += int((~exact).sum())
            drops["near_duplicate"] += int((exact & ~near).sum())
            keep = exact & near
            drops["contaminated"] += int((keep & dirty).sum())
            keep &= ~dirty
        new_pairs = [p for p, k in zip(cand, keep, strict=True) if k]
        new_texts = [t for t, k in zip(texts, keep, strict=True) if k]
        new_emb = (embedder.encode(new_texts) if new_texts
                   else np.zeros((0, setup.target_emb.shape[1]), dtype=np.float32))

        # rewards: OT between each chosen cluster's new pairs and the target (all clusters at once)
        rewards: list[float] = []
        chosen = sorted(set(arms), key=arms.index)
        if policy is not None and chosen:
            groups = [new_emb[[i for i, p in enumerate(new_pairs) if p.cluster == c]] for c in chosen]
            nonempty = [i for i, g in enumerate(groups) if len(g)]
            w = np.full(len(chosen), np.nan)
            if nonempty:
                w[nonempty] = distance_batch([groups[i] for i in nonempty], setup.target_emb)
            rewards = [config.empty_reward if np.isnan(x) else 1.0 - float(x) - config.reward_offset for x in w]
            policy.update(np.asarray(chosen, dtype=np.int64), np.asarray(rewards, dtype=np.float64))

        kept.extend(new_pairs)
        kept_texts.extend(new_texts)
        kept_emb = np.concatenate([kept_emb, new_emb]) if len(new_emb) else kept_emb
        ot_now = float(distance(kept_emb, setup.target_emb)) if len(kept_emb) else None

        ledger = state["ledger"]
        for c in result.completions:
            ledger["requests"] += 1
            ledger["cache_hits"] += int(c.cached)
            ledger["tokens_in"] += c.tokens_in
            ledger["tokens_out"] += c.tokens_out
            ledger["seconds"] += c.seconds
        state["documents_read"] += len(rows)
        if policy is not None:
            for c in arms:
                state["cursor"][c] += 1
            state["policy"] = policy.state_dict()
        else:
            state["cursor_global"] += len(rows)
        state["pairs"] += len(new_pairs)
        total_drops = Counter(state["drops"])
        total_drops.update(drops)
        state["drops"] = dict(sorted(total_drops.items()))
        state["round"] = r + 1

        from equal.data.io import append_jsonl

        if new_pairs:
            append_jsonl(run.qa, [p.to_record() for p in new_pairs])
        append_jsonl(run.rounds, [{
            "round": r,
            "clusters": chosen,
            "rewards": [round(x, 6) for x in rewards],
            "documents": [setup.docs[i].id for i in rows],
            "documents_read": state["documents_read"],
            "pairs_new": len(new_pairs),
            "pairs": state["pairs"],
            "drops": dict(drops),
            "llm_requests": ledger["requests"],
            "tokens_in": ledger["tokens_in"],
            "tokens_out": ledger["tokens_out"],
            "ot_distance": None if ot_now is None else round(ot_now, 6),
        }])
        run.commit(state)
        _write_ledger(run, state, llm)
        rounds_here += 1
        if on_round is not None:
            on_round(RoundInfo(r, state["documents_read"], budget_docs, state["pairs"],
                               float(np.mean(rewards)) if rewards else None,
                               ledger["tokens_in"] + ledger["tokens_out"], ot_now))

    ot_final = float(distance(kept_emb, setup.target_emb)) if len(kept_emb) else None
    _write_ledger(run, state, llm)
    summary = ExtractSummary(
        run=str(run.root), strategy=config.strategy, rounds=state["round"],
        documents_read=state["documents_read"], documents_total=n_docs, clusters=setup.n_clusters,
        pairs=state["pairs"], llm_requests=state["ledger"]["requests"],
        llm_cache_hits=state["ledger"]["cache_hits"], llm_failed=state["ledger"]["failed"],
        tokens_in=state["ledger"]["tokens_in"], tokens_out=state["ledger"]["tokens_out"],
        seconds=round(time.perf_counter() - t0, 3), ot_distance=ot_final, drops=state["drops"],
        dataset=str(run.qa), report=str(run.report), resumed=resumed,
    )
    atomic_write_json(run.summary, summary.to_dict())
    try:
        from equal.report import write_run_report

        write_run_report(run.root)
    except Exception:  # a broken report must never cost a finished run
        logger.exception("could not write %s", run.report)
    return summary


def _read_state(run: RunDir) -> dict[str, Any]:
    import json

    try:
        return json.loads(run.state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the committed state: {exc}", path=str(run.state)) from exc


def _write_ledger(run: RunDir, state: dict[str, Any], llm: Any) -> None:
    ledger = dict(state["ledger"])
    ledger["documents_read"] = state["documents_read"]
    ledger["rounds"] = state["round"]
    if llm is not None and hasattr(llm, "model"):
        ledger["model"] = llm.model
    atomic_write_json(run.ledger, ledger)


def load_pairs(run: str | Path) -> list[Any]:
    """The QA pairs of a run directory, in commit order."""
    from equal.data.qa import QAPair

    rd = RunDir(Path(run))
    if not rd.qa.exists():
        raise DataError("no qa.jsonl: not an equal extract run directory, or no round finished yet",
                        path=str(rd.root))
    return [QAPair.from_record(r) for r in iter_jsonl(rd.qa)]


def export_run(run: str | Path, out: str | Path, fmt: str) -> int:
    """Write a run's pairs to ``out`` in ``fmt`` (messages, sharegpt, alpaca, or parquet in messages form)."""
    from equal.data import write_sft

    pairs = load_pairs(run)
    records = [p.to_record() for p in pairs]
    out = Path(out)
    if fmt == "parquet":
        if out.suffix != ".parquet":
            out = out.with_suffix(".parquet")
        return write_sft(out, records, "messages")
    if fmt not in ("messages", "sharegpt", "alpaca"):
        raise ValueError(f"format={fmt!r} must be one of messages, sharegpt, alpaca, parquet.")
    return write_sft(out, records, fmt)
