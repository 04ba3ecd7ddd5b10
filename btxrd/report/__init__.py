"""Sweep report: every job with its intervals, seeds aggregated, and which differences are real.

Written when a multirun ends (by the sweep callback) and on demand:

    python -m btxrd.report multirun/2026-11-22/10-00-00     # a sweep folder
    python -m btxrd.report <parent run id> [--tracking-uri URI]

Files (in the sweep folder, and logged to the parent run under ``report/``):
``sweep_report.md`` (the tables), ``sweep_report.csv`` (one row per job, every metric
with its interval), ``sweep_configurations.csv`` (seeds aggregated), ``sweep_comparisons.csv``
(every tested difference), ``sweep_subgroups.csv`` (every job's metrics per subgroup of its test part),
``sweep_report.png`` (the chart, with error bars); of a cross-validation sweep, ``sweep_crossvalidation.csv``
(the fold ensemble and the out-of-fold results, ``report/crossval.py``).
"""
