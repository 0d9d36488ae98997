"""cmdiad.memory."""
