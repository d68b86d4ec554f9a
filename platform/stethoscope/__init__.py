"""stethoscope: unsupervised anomalous sound detection (DCASE Task 2) on Ray.

The package layout follows ../shared/DESIGN.md: ``data`` (index, audio, features, ingest, synthetic sets),
``methods`` (pure-PyTorch Methods), ``training`` (Ray Train glue), ``evaluation`` (AUC/pAUC, reports).
"""

from stethoscope.errors import StethoscopeError

__version__ = "0.1.0"
__all__ = ["StethoscopeError", "__version__"]
