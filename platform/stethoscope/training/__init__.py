"""Ray Train glue: ``fit(method_name, config, dataset, scaling, ...)`` and the generic loop."""

from stethoscope.training.trainer import FitResult, Scaling, fit, replica_divergence

__all__ = ["FitResult", "Scaling", "fit", "replica_divergence"]
