"""Adapters that bring ``codiag.monitor`` to where users train and watch their runs.

Each module is a thin adapter over :func:`codiag.monitor` and imports its framework only when used.
"""
