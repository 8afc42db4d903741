"""EQUAL's InfoNCE: sentence-transformers' ``MultipleNegativesRankingLoss`` with a document mask.

For anchor (document) i of a batch, the candidates are every row's positive and every row's hard negatives
(in-batch plus mined negatives); with cosine similarity s and temperature τ::

    L_i = -log( exp(s(d_i, q_i+)/τ) / Σ_{c in candidates, c not another pair of d_i} exp(s(d_i, c)/τ) )

``MultipleNegativesRankingLoss`` alone would count a pair of document i as its negative whenever it sits in
the batch as another row's positive (a document with several pairs) or another row's mined negative. The
``label`` column (document number of the anchor, then of each negative) takes those out of the softmax.
"""

from __future__ import annotations

from typing import Any

__all__ = ["info_nce_reference"]  # and InfoNCELoss, built on first access (it subclasses a torch module)


def _loss_class() -> Any:
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    class InfoNCELoss(MultipleNegativesRankingLoss):  # type: ignore[misc]
        """``MultipleNegativesRankingLoss(scale=1/τ)`` whose candidates from the anchor's own document are masked.

        ``labels`` : int tensor of shape (batch, 1 + k): the anchor's document, then each negative's. Without
        labels (or with no collision in the batch) it equals the parent loss exactly.
        """

        def compute_loss_from_embeddings(self, embeddings: list[Any], labels: Any) -> Any:
            if labels is None or not isinstance(labels, torch.Tensor) or labels.ndim != 2:
                return super().compute_loss_from_embeddings(embeddings, labels)
            queries, docs = embeddings[0], embeddings[1:]
            if labels.shape != (queries.size(0), len(docs)):
                raise ValueError(f"labels of shape {tuple(labels.shape)}; expected ({queries.size(0)}, {len(docs)})")
            b = queries.size(0)
            scores = self.similarity_fct(queries, torch.cat(docs, dim=0)) * self.scale  # (b, b * (1 + k))
            # document of each candidate, in torch.cat order: all positives (the anchors' own), then negative_1...
            owner = labels.to(scores.device).T.reshape(-1)
            same = owner.unsqueeze(0) == labels[:, 0].to(scores.device).unsqueeze(1)
            rows = torch.arange(b, device=scores.device)
            same[rows, rows] = False  # the row's own positive stays
            scores = scores.masked_fill(same, -torch.inf)
            return -(scores[rows, rows] - torch.logsumexp(scores, dim=1)).mean()

    return InfoNCELoss


def __getattr__(name: str) -> Any:  # the class needs torch: built on first use
    if name == "InfoNCELoss":
        cls = _loss_class()
        globals()["InfoNCELoss"] = cls
        return cls
    raise AttributeError(name)


def info_nce_reference(anchors: Any, candidates: Any, owners: Any, anchor_owner: Any, temperature: float) -> float:
    """Straightforward float64 InfoNCE of a batch, for checking :class:`InfoNCELoss` (numpy only).

    Parameters
    ----------
    anchors : ndarray of shape (b, d)
    candidates : ndarray of shape (m, d)
        Row i (< b) is anchor i's positive.
    owners : ndarray of shape (m,), int
        Document of each candidate.
    anchor_owner : ndarray of shape (b,), int
    temperature : float
    """
    import numpy as np

    a = np.asarray(anchors, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    total = 0.0
    for i in range(a.shape[0]):
        logits = [float(a[i] @ c[j]) / temperature for j in range(c.shape[0])
                  if j == i or owners[j] != anchor_owner[i]]
        pos = float(a[i] @ c[i]) / temperature
        top = max(logits)
        total += -(pos - (top + np.log(sum(np.exp(x - top) for x in logits))))
    return total / a.shape[0]
