"""A folder as the lake."""
