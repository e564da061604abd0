"""The trace-driven cluster simulator (``swiftmoe sim``).

It replays a routing trace on a simulated cluster, placing experts with the real strategy plugins
through a real sidecar and splitting tokens with the engine's own split
(``swiftmoe.engine.split``), and prices each iteration with a measured cost model. Modules:
``trace`` (read, scale, synthesise, per-source counts), ``calibration`` (expert time against
tokens), ``traffic`` (the split's per-rank traffic sums), ``model`` (the cost model), ``systems``
(what is compared), ``plans`` (each job's plans, fetched ahead), ``run`` (the replay), ``report``
(summaries, table, JSON), ``cli`` (the command).
"""
