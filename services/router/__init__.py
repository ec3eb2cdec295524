"""The router: flow control and replica choice in front of inference replicas.

One active router, restarted fast, rather than several side by side. Its
decisions rest on state only one process can hold exactly: each replica's
free slots (its adaptive limit less the leases it granted), the tenants'
fair queues and who holds how many slots (the reserve and the light
tenants' headroom). Two routers placing work on the same replicas would
each count only their own leases, so together they would over-commit every
replica up to twice its limit, and each would split the tenants' fairness
in two (a flood through one router would not wait behind a light tenant on
the other). Sharing that state through a store would put a round trip on
every admission and release, the path the router exists to keep short.
What a restart loses is small and comes back by itself:

- Replicas: static ones come from the router's flags; registered ones from
  the replica sync sidecar (deploy/runtime/replica_sync.py), which
  reconciles against the router's own ListReplicas and runs a round the
  moment the router (re)starts (its liveness watch reopens).
- Queued requests: on SIGTERM they are refused at once with UNAVAILABLE and
  RetryInfo (dispatcher.RouterStoppingError); streams already placed finish
  within the grace period. A request that reached no replica is safe to
  send again, and the gateway does, for up to 3 s (gateway/routes.py).
- Placed streams in direct routing (the default) never pass through the
  router: the gateway streams from the replica and bills what it streamed;
  only the router's report on the stream is lost.
- Learned state (each replica's limit, latency, the tenants seen) starts
  again from its defaults, as at any start.

Measured by bench/router_restart.py (4 simulated replicas, 16 clients
through one gateway, 64-token streams, 3 rounds a signal; 2 shared cores):
signal to SERVING with every replica serving 1.4 s after SIGTERM (0.4 s of
it draining placed streams) and 0.9 s after SIGKILL; a new process to
SERVING 0.9 s; every stream in flight at the signal completed (48 of 48
each way); requests arriving meanwhile were held by the gateway and served,
none failed, unless the restart ran past the gateway's 3 s (one SIGTERM
round on a loaded machine: 16 UNAVAILABLE, retryable).
"""
