"""Eps sweeps: methods x eps x seeds, one run directory each, resumable, on a local pool of
worker processes or on Ray. The function is ``codiag.sweep`` (``runner.sweep``); ``grid`` holds
the cells and the shared protocol, ``index`` the ``sweep.json`` index and the per-cell claims,
``cell`` runs one cell, ``local`` and ``ray_exec`` are the executors, ``presets`` the sweeps of
``codiag reproduce``."""
