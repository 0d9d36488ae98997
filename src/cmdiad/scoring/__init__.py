"""cmdiad.scoring."""
