"""Bandit policies that choose which clusters to read next, behind one interface.

Every policy is pure (no I/O), seeded and serialisable::

    policy = make_policy("ucb", n_arms=1000, seed=0, neighbors=neighbors)
    arms = policy.select(50, available=has_unread_docs)
    policy.update(arms, rewards)
    state = policy.state_dict()            # JSON-able; Policy.from_state(state) resumes exactly
"""

from equal.bandit._base import STATE_FORMAT, Policy
from equal.bandit._policies import (
    EXP3,
    POLICIES,
    UCB,
    EpsilonGreedy,
    ThompsonSampling,
    Uniform,
    make_policy,
)

__all__ = [
    "EXP3",
    "POLICIES",
    "STATE_FORMAT",
    "UCB",
    "EpsilonGreedy",
    "Policy",
    "ThompsonSampling",
    "Uniform",
    "make_policy",
]
