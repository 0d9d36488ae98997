"""cmdiad.preprocessing."""
