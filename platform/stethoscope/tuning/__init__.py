"""Ray Tune + Optuna glue (DESIGN.md step 6): search spaces from ``search_spaces/*.yaml``, per-machine sweeps whose
trials are Ray Train runs scored on a validation split, and the exported best config per machine type.

- :mod:`stethoscope.tuning.space` — ``load_space(path, machine_type)``: read and validate a search-space file.
- :mod:`stethoscope.tuning.validation` — the validation clips and the validation metric.
- :mod:`stethoscope.tuning.runner` — ``run_sweep(...)``: one Tune experiment (resumable).
- :mod:`stethoscope.tuning.export` — results table, sweep plot, best config YAML.

``runner`` imports Ray Tune; import it only where a sweep runs.
"""

from stethoscope.tuning.space import METRICS, Asha, Param, Resources, SearchSpace, load_space
from stethoscope.tuning.validation import ValidationSpec, make_split, validation_metrics

__all__ = ["METRICS", "Asha", "Param", "Resources", "SearchSpace", "ValidationSpec", "load_space", "make_split",
           "validation_metrics"]
