"""Ray backends: the same run directory, resume and results as a local run, on a cluster.

``equal extract --ray`` and ``equal embed --ray`` embed with one model per Ray actor (Ray Data
``map_batches``), assign clusters in Ray Data tasks, and fan each round's extraction requests out over LLM
actors; the bandit, the request cache and every write stay in the driver, so kill -9 and resume behave as in a
local run and no request is paid for twice.
"""

from equal.distributed._cluster import assign_clusters, kmeans_labels, train_on_sample
from equal.distributed._embed import RayEmbedder
from equal.distributed._llm import RayLLM
from equal.distributed._session import ActorRequest, RayResources, ray_session, resources

__all__ = ["ActorRequest", "RayEmbedder", "RayLLM", "RayResources", "assign_clusters", "kmeans_labels",
           "ray_session", "resources", "train_on_sample"]
