"""The Python front (`import orbatch`): run and submit tables from a script, a thread or a notebook.

Layer rule: the top layer; it may import `jobs.cli` (the services, the simulator and the in-process worker
that `orbatch run` uses) and every layer below it. Only the `orbatch` package imports it.
"""
