"""Market scale: one platform as its market grows to 10, 100, 1,000 and 10,000 nodes.

One platform process (`infer serve`, PostgreSQL + Redis on 127.0.0.1) and a few simulators
(`infer node simulate`) that all the nodes share. Each step inserts node rows in bulk (a
few operators, one priced model), makes every node due for a check at once, and measures
the sweep, the gateway, one routing plan and the lateness of later checks. The servers,
the load generator, CPU accounting and the market's accounts come from bench/gatewaybench.
Run it as `python bench/market_scale.py`; see bench/README.md and docs/performance.md.

Modules: `options` and `main` (the run), `nodes` (the market's growth), `watch` (sweeps,
lateness, /healthz, connections), `books` (the exactness check over many operators),
`report` (the table and the targets).
"""
