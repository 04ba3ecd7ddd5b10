"""The process a job runs in, one module each (imported directly: ``process`` stays light, no torch):

- ``process``: stop signals (SIGTERM, Ctrl-C), the watch on a sweep's launcher;
- ``environment``: device, threads per job, seeds;
- ``provenance``: the code's commit and version, when the process started.

Knows nothing of Hydra or MLflow.
"""
