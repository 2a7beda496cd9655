"""ewald's science layer: pure functions on numpy arrays and small model dataclasses.

Nothing in this package reads or writes files, starts Dask or configures logging; the
``pipeline`` package does all of that and calls into here.
"""
