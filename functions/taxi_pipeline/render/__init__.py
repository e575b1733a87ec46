"""Rendering of the run history for people: text tables and the HTML report."""
