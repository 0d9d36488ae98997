"""cmdiad.io."""
