"""Benchmarks: ``python -m btxrd.bench`` (``make bench``); ``cpu`` and, where CUDA is present, ``gpu``."""
