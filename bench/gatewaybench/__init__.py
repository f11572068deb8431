"""Gateway overhead: the runtime direct vs through INFER, on loopback, with exact billing.

The simulator (`infer node simulate`, no artificial delay) and the platform (`infer serve`,
PostgreSQL + Redis by default) run as their own processes; this package is only the load
generator (one asyncio loop on uvloop; a lean HTTP/1.1 client, one keep-alive connection
per worker). Each (path, mode, concurrency) gets a warm-up, then a fixed duration; direct
and INFER run back to back so that both see the same machine. Afterwards the database must
show that every request was billed exactly. Run it as `python bench/gateway.py`; see
bench/README.md and docs/performance.md.

Modules: `options` and `main` (the run), `processes` (servers, database, environment),
`market` (the market set up through INFER's API), `calls`, `lean` and `httpx_pool` (the
load generator's HTTP clients), `load` (workers and rows), `cpu` (CPU accounting from
/proc), `billing` (the exactness check), `profiling` (py-spy), `report` (the tables).
"""
