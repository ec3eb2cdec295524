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
through one gateway, 64-token streams, 5 restarts a signal, 2 cores shared
with other work at load 5-7; median [range]): signal to SERVING with every
replica serving 1.49 s [1.28-1.71] after SIGTERM (0.50 s of it draining
placed streams) and 0.92 s [0.87-1.01] after SIGKILL; a new process to
SERVING about 0.9-1.0 s. Every stream in flight at the signal completed
(80 of 80 each way), and no request failed: those arriving meanwhile were
held by the gateway, the longest about 2 s. A restart past the gateway's
3 s (one start took 2.4 s on this loaded machine) fails the requests held
longest with UNAVAILABLE, retryable. Before this work the same run failed
every request arriving during a restart (some INTERNAL), and a restarted
router with the sync sidecar stayed empty until the sidecar's next round
(10 s by default).
"""
