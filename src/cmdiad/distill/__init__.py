"""cmdiad.distill: cross-modal distillation networks, their training and checkpoints.

Importing the package registers cmdiad's designs and the reference code's in ``DISTILLERS``.
"""

from cmdiad.distill import networks, reference  # noqa: F401  (fills the registry)
