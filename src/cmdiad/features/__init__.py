"""cmdiad.features."""
