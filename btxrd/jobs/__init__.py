"""Jobs: what ``train.py`` and ``evaluate.py`` run, each a short sequence of named steps.

- ``train``: a training job, from a composed config to a closed MLflow run;
- ``evaluate``: re-scoring a trained model;
- ``parts``: the data step both share (read, split, cache, loaders);
- ``scoring``: the scoring step both share.
"""
