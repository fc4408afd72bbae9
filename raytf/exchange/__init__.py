"""Everything that moves and applies a gradient.

The protocol, pure Python (no Ray, no TensorFlow; its tests run in milliseconds with threads): a
state machine per server (`state`), consistency policies (`policies`), typed messages (`messages`).
The bytes: the shard plan (`sharding`), sparse tables' rows (`tables`), the shared slots
(`transport`), the doorbell (`doorbell`), the cross-node data plane (`wire`: an authenticated,
chunked TCP connection per worker-server pair; `wire_link`: a training step's push and answer over
it) and its compression (`codecs`), the server actor and its fused updates (`server`, `optimizers`) and its state and
checkpoint shard (`shard_state`).
May import: `raytf.config`, `raytf.observe`, `raytf.runtime`, `raytf.errors`.
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
