"""cmdiad.distill."""
