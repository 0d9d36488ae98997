"""cmdiad.pipeline."""
