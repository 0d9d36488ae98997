"""cmdiad.metrics."""
