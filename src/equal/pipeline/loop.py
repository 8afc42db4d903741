"""The EQUAL round engine: :class:`ExtractionLoop` and its pure planning step :func:`plan_round`.

One :meth:`ExtractionLoop.step` is one round::

    policy.select(available) -> sampler.take(cluster, cursor, n) -> extractor.extract(docs)
      -> for f in filters: f.keep(candidates) -> embedder.encode(kept) -> reward.score(groups)
      -> policy.update(arms, rewards) -> for f in filters: f.add(kept) -> run_dir.commit(RunState)

The loop owns no algorithm: every decision is a part's (see :mod:`equal.pipeline.parts`). Its state is the
frozen :class:`~equal.pipeline.state.RunState`, committed atomically after the round's rows are on disk; a
resumed loop replays ``qa.jsonl`` into the filters' indexes and the running distance once, and then gives
the same rounds as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from equal.config import ExtractConfig
from equal.data.io import append_jsonl, atomic_write_json
from equal.data.qa import attach_fields, read_qa_pairs
from equal.errors import LLMError
from equal.llm import Ledger
from equal.pipeline.parts import Candidates, Group
from equal.pipeline.rewards import RunningOT
from equal.pipeline.rundir import RunDir
from equal.pipeline.sampler import ClusterSampler, CorpusOrder
from equal.pipeline.setup import Inputs
from equal.pipeline.state import RunState

__all__ = ["ExtractionLoop", "RoundInfo", "plan_round"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundInfo:
    """What a progress display gets after each committed round."""

    round: int
    documents_read: int
    budget_docs: int | None
    pairs: int
    reward: float | None
    tokens: int
    ot_distance: float | None


def plan_round(policy: Any, sampler: ClusterSampler | CorpusOrder, state: RunState, *, clusters: int,
               docs_per_cluster: int, limit: int) -> tuple[list[int], list[int]]:
    """The documents of the next round: (rows, cluster of each row; empty without a policy), at most ``limit``.

    With a policy: the policy's top ``clusters`` among the clusters the sampler still offers, and from each
    the next ``docs_per_cluster`` documents. Without one (``random``, ``all``): the next
    ``clusters * docs_per_cluster`` documents of the corpus order.
    """
    if policy is None:
        assert isinstance(sampler, CorpusOrder)
        take = sampler.take(state.cursor_global, min(limit, clusters * docs_per_cluster))
        return [int(r) for r in take], []
    assert isinstance(sampler, ClusterSampler)
    rows: list[int] = []
    arms: list[int] = []
    chosen = policy.select(clusters, available=sampler.available(state.cursors, docs_per_cluster))
    for c in (int(a) for a in chosen):
        take = sampler.take(c, state.cursors[c], docs_per_cluster)[: max(0, limit - len(rows))]
        rows.extend(int(r) for r in take)
        arms.extend([c] * len(take))
    return rows, arms


def _first_order(arms: Sequence[int]) -> list[int]:
    return sorted(set(arms), key=list(arms).index)


class ExtractionLoop:
    """Runs the rounds of one extraction run in ``run_dir`` from parts built by :mod:`equal.pipeline.factory`.

    Parameters
    ----------
    config : ExtractConfig
    run_dir : RunDir
        Prepared (``run_dir.prepare(config)``) run directory.
    inputs : Inputs
        Documents, target, clusters.
    embedder : Embedder
        Embeds the kept pairs (unit-norm float32).
    extractor : Extractor or None
        None only for a run that is already finished.
    sampler : ClusterSampler or CorpusOrder
    policy : equal.bandit.Policy or None
        None for the ``random`` and ``all`` baselines.
    reward : Reward
    filters : sequence of PairFilter
        Applied in order; drops counted under each filter's ``name``.
    ledger : equal.llm.Ledger
        The live ledger, shared with the parts that call an LLM.
    state : RunState or None
        The committed state to continue from (None: a new run).
    """

    def __init__(self, config: ExtractConfig, run_dir: RunDir, *, inputs: Inputs, embedder: Any,
                 extractor: Any, sampler: ClusterSampler | CorpusOrder, policy: Any, reward: Any,
                 filters: Sequence[Any], ledger: Ledger | None = None, state: RunState | None = None,
                 model: str | None = None) -> None:
        self.config, self.run_dir, self.inputs = config, run_dir, inputs
        self.embedder, self.extractor, self.sampler = embedder, extractor, sampler
        self.policy, self.reward, self.filters = policy, reward, list(filters)
        self.ledger = ledger if ledger is not None else Ledger()
        self.model = model
        self._dropped: list[dict[str, Any]] = []  # this round's pairs dropped by a filter (for rounds.jsonl)
        self.running = RunningOT(inputs.target_emb, seed=config.run.seed)
        self.budget_docs = len(inputs.docs) if config.run.strategy == "all" else config.run.budget_docs
        if state is None:
            for path in (run_dir.qa, run_dir.rounds):
                path.write_bytes(b"")  # exist from the start: a run may keep no pair for a while
            state = run_dir.commit(RunState(cursors=(0,) * inputs.n_clusters,
                                            policy=policy.state_dict() if policy is not None else None,
                                            ledger=self.ledger))
        else:
            run_dir.truncate_logs(state)
            if policy is not None and state.policy is not None:
                policy.load_state_dict(state.policy)
            self._replay()
        self.state = state

    # ---------------------------------------------------------------- public
    def step(self) -> RoundInfo | None:
        """Run and commit one round; None (and the run marked finished) when the budget or corpus is spent."""
        state = self.state
        limit = self._budget_left()
        rows, arms = (plan_round(self.policy, self.sampler, state, clusters=self.config.bandit.clusters_per_round,
                                 docs_per_cluster=self.config.bandit.docs_per_cluster, limit=limit)
                      if limit > 0 else ([], []))
        if not rows:
            self.state = self.run_dir.commit(dataclasses.replace(state, finished=True, ledger=self.ledger))
            return None
        # a DocumentStore reads each row group once per round (rows of a large corpus span many groups)
        take = getattr(self.inputs.docs, "take", None)
        docs = take(rows) if take is not None else [self.inputs.docs[i] for i in rows]
        result = self._extract(docs, arms if arms else [int(self.inputs.labels[i]) for i in rows])
        kept, drops = self._filter(result, docs)
        emb = self.embedder.encode(kept.texts) if len(kept) else np.zeros(
            (0, self.inputs.target_emb.shape[1]), dtype=np.float32)
        chosen, rewards = self._reward(kept, emb, arms)
        for f in self.filters:
            f.add(kept)
        self.running.add(emb)
        return self._commit(rows, arms, result, kept, drops, chosen, rewards, [d.id for d in docs])

    def run(self, *, max_rounds: int | None = None, on_round: Callable[[RoundInfo], None] | None = None) -> None:
        """Step until finished, or ``max_rounds`` rounds in this call (the run stays resumable)."""
        done = 0
        while not self.state.finished:
            if max_rounds is not None and done >= max_rounds and self._budget_left() > 0:
                break
            info = self.step()
            if info is None:
                break
            done += 1
            if on_round is not None:
                on_round(info)

    # ---------------------------------------------------------------- round stages
    def _budget_left(self) -> int:
        """Documents this run may still read (0 when any budget is spent)."""
        cfg, state = self.config.run, self.state
        left = len(self.inputs.docs) - state.documents_read
        if cfg.budget_docs is not None:
            left = min(left, cfg.budget_docs - state.documents_read)
        if cfg.budget_tokens is not None and state.tokens_used >= cfg.budget_tokens:
            return 0
        if cfg.budget_usd is not None and state.cost_used >= cfg.budget_usd:
            return 0
        return max(left, 0)

    def _extract(self, docs: list[Any], clusters_of: list[int]) -> Any:
        r = self.state.round
        result = self.extractor.extract(docs, cluster=clusters_of, round=r)
        self.ledger.add(result.completions)
        if result.failed_docs:
            # the round is not committed, but what was asked (and paid) is: counted in the ledger
            self.state = self.run_dir.commit(dataclasses.replace(self.state, ledger=self.ledger))
            self.write_ledger()
            errors = [c.error for c in result.completions if c.error][:3]
            reasons = Counter(str(c.extra.get("reason") or "error") for c in result.completions if not c.ok)
            why = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
            raise LLMError(
                f"{len(result.failed_docs)} of {len(docs)} extraction requests failed in round {r} "
                f"({why}; first errors: {errors}); nothing of this round was committed and every completed request "
                "is cached: rerun the same command to resume"
            )
        return result

    def _filter(self, result: Any, docs: list[Any]) -> tuple[Candidates, Counter[str]]:
        drops: Counter[str] = Counter(result.drops)
        self._dropped = []
        pairs = attach_fields(result.pairs, docs)  # --keep-fields: corpus provenance on each pair
        cands = Candidates(pairs, [p.render_text() for p in pairs], {d.id: d for d in docs}, self.state.round)
        for f in self.filters:
            if not len(cands):
                break
            mask = np.asarray(f.keep(cands), dtype=bool)
            if mask.shape != (len(cands),):
                raise ValueError(f"filter {f.name!r} returned a mask of shape {mask.shape} for {len(cands)} pairs")
            drops[f.name] += int((~mask).sum())
            # kept for the report, which lists every dropped pair with the filter that dropped it
            self._dropped.extend({**cands.pairs[i].to_record(), "reason": f.name} for i in np.flatnonzero(~mask))
            cands = cands.subset(mask)
        return cands, drops

    def _reward(self, kept: Candidates, emb: np.ndarray, arms: list[int]) -> tuple[list[int], list[float]]:
        chosen = _first_order(arms)
        if self.policy is None or not chosen:
            return chosen, []
        groups = []
        for c in chosen:
            idx = [i for i, p in enumerate(kept.pairs) if p.cluster == c]
            groups.append(Group(c, [kept.pairs[i] for i in idx], [kept.texts[i] for i in idx], emb[idx]))
        raw = np.asarray(self.reward.score(groups), dtype=np.float64)
        rewards = [self.config.bandit.empty_reward if np.isnan(x) else float(x) for x in raw]
        self.policy.update(np.asarray(chosen, dtype=np.int64), np.asarray(rewards, dtype=np.float64))
        return chosen, rewards

    def _commit(self, rows: list[int], arms: list[int], result: Any, kept: Candidates, drops: Counter[str],
                chosen: list[int], rewards: list[float], ids: list[str]) -> RoundInfo:
        state, r = self.state, self.state.round
        cursors = list(state.cursors)
        for c in arms:
            cursors[c] += 1
        total = Counter(state.drops)
        total.update(drops)
        used = sum(c.tokens_in + c.tokens_out for c in result.completions if c.ok)
        money = self.ledger.price(sum(c.tokens_in for c in result.completions if c.ok),
                                  sum(c.tokens_out for c in result.completions if c.ok)) or 0.0
        ot_now = self.running.value()
        state = dataclasses.replace(
            state, round=r + 1, cursors=tuple(cursors),
            cursor_global=state.cursor_global + (0 if self.policy is not None else len(rows)),
            documents_read=state.documents_read + len(rows), pairs=state.pairs + len(kept),
            tokens_used=state.tokens_used + used, cost_used=state.cost_used + money,
            drops=dict(sorted(total.items())), ledger=self.ledger,
            policy=self.policy.state_dict() if self.policy is not None else None,
        )
        if len(kept):
            append_jsonl(self.run_dir.qa, [p.to_record() for p in kept.pairs])
        append_jsonl(self.run_dir.rounds, [{
            "round": r, "clusters": chosen, "rewards": [round(x, 6) for x in rewards],
            "documents": ids, "documents_read": state.documents_read,
            "pairs_new": len(kept), "pairs": state.pairs, "drops": dict(drops),
            "llm_requests": self.ledger.requests, "tokens_in": self.ledger.tokens_in,
            "tokens_out": self.ledger.tokens_out, "ot_distance": None if ot_now is None else round(ot_now, 6),
            # cumulative, like llm_requests: the report's cost per round is the difference between rows
            "llm_cached": self.ledger.cached, "llm_seconds": round(self.ledger.seconds, 3),
            "dropped": self._dropped,
        }])
        self.state = self.run_dir.commit(state)
        self.write_ledger()
        return RoundInfo(r, state.documents_read, self.budget_docs, state.pairs,
                         float(np.mean(rewards)) if rewards else None, state.tokens_used, ot_now)

    # ---------------------------------------------------------------- resume and bookkeeping
    def _replay(self) -> None:
        """Feed every committed pair to the filters' indexes and the running distance, once, in order."""
        if not self.run_dir.qa.exists():
            return
        pairs = read_qa_pairs(self.run_dir.qa)  # errors name qa.jsonl:line:field
        if not pairs:
            return
        kept = Candidates(pairs, [p.render_text() for p in pairs], {}, -1)
        for f in self.filters:
            f.add(kept)
        self.running.add(self.embedder.encode(kept.texts))

    def write_ledger(self) -> None:
        ledger = self.ledger.to_dict()
        ledger.update(documents_read=self.state.documents_read, rounds=self.state.round, pairs=self.state.pairs,
                      **self.ledger.per_pair(self.state.pairs))
        if self.model:
            ledger["model"] = self.model
        atomic_write_json(self.run_dir.ledger, ledger)

    def exact_distance(self) -> float | None:
        """The exact OT distance of every kept pair to the target (computed once, at the end)."""
        return self.running.exact()
