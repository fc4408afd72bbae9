"""The parameter-server exchange: a state machine per server, consistency policies, typed messages.

Pure Python (no Ray, no TensorFlow): `raytf.ps.ParameterServer` and `raytf.worker.Worker` are
thin Ray actors around it, and its tests run in milliseconds with threads.
"""

from raytf.exchange.messages import (
    ExchangeStats,
    Outcome,
    Push,
    Reply,
    ServerNotReady,
    ServerStats,
    StalenessStats,
    Status,
    WorkerResult,
)
from raytf.exchange.policies import (
    POLICIES,
    AggregationPolicy,
    AsyncPolicy,
    SSPPolicy,
    SyncPolicy,
    make_policy,
    policy_for,
    register,
)
from raytf.exchange.state import Exchange, ShardBackend, Ticket

__all__ = [
    "POLICIES", "AggregationPolicy", "AsyncPolicy", "Exchange", "ExchangeStats", "Outcome", "Push", "Reply", "ServerNotReady",
    "SSPPolicy", "ServerStats", "ShardBackend", "StalenessStats", "Status", "SyncPolicy", "Ticket", "WorkerResult",
    "make_policy", "policy_for", "register",
]
