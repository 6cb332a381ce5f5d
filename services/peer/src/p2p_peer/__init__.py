"""The per-host peer: a long-running engine that keeps a cache, shares everything in it, and
answers plain HTTP on the host (the gateway), so any HTTP client gets the swarm."""
