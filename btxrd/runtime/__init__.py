"""The process a job runs in, one module each (imported directly: ``process`` stays light, no torch):

- ``process``: glibc allocator tunables and stop signals (SIGTERM, Ctrl-C);
- ``environment``: device, threads per job, seeds;
- ``provenance``: the code's commit and version, when the process started.

Knows nothing of Hydra or MLflow.
"""
