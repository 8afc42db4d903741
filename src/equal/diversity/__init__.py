"""Dataset diversity: NovelSum (reference-code and paper variants) and the classic metrics.

- :func:`novelsum` — NovelSum, streamed in row blocks (no n × n matrix), numpy or torch/CUDA; optional
  approximate mode for millions of rows. :func:`novelsum_rows` gives the per-sample novelty.
- :func:`local_density` — its density term σ^β (also used by NovelSelect).
- :func:`mean_cosine_distance`, :func:`vendi_score`, :func:`radius`, :func:`log_determinant`,
  :func:`cluster_inertia`, :func:`partition_entropy` — the baselines of the NovelSum paper.
- :func:`diversity_report` — all of them in one dict.
"""

from equal.diversity._density import local_density
from equal.diversity._metrics import (
    cluster_inertia,
    diversity_report,
    log_determinant,
    mean_cosine_distance,
    partition_entropy,
    radius,
    vendi_score,
)
from equal.diversity._novelsum import novelsum, novelsum_rows

__all__ = [
    "cluster_inertia",
    "diversity_report",
    "local_density",
    "log_determinant",
    "mean_cosine_distance",
    "novelsum",
    "novelsum_rows",
    "partition_entropy",
    "radius",
    "vendi_score",
]
