"""cmdiad: multimodal industrial anomaly detection with cross-modal distillation."""

__version__ = "0.1.0"
