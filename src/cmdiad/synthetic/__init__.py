"""cmdiad.synthetic."""
