"""The stages of one run, in DESIGN.md's data-flow order; :func:`stethoscope.pipeline.run` chains them (and then
publishes), ``jobs/train.py`` / ``jobs/evaluate.py`` run them one at a time, and a sweep's trials
(:mod:`stethoscope.tuning`) run ingest once and train + validation per trial.

- :mod:`~stethoscope.stages.ingest` — the run's Config and input specs, index + Ray Data ingest (:class:`Prepared`);
- :mod:`~stethoscope.stages.split` — the run's one validation split, written to the run folder;
- :mod:`~stethoscope.stages.train` — Ray Train fit of each training unit (:mod:`stethoscope.scopes`);
- :mod:`~stethoscope.stages.score` — scoring a run's models per unit, and score-variant selection on validation;
- :mod:`~stethoscope.stages.detect` — the detector stage of embedding methods;
- :mod:`~stethoscope.stages.evaluate` — scores of every clip and the report on the held-out test clips.

Each module imports only the ones listed before it (and the library below, tests/test_layering.py).
"""
