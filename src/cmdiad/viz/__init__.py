"""cmdiad.viz."""
