"""Selectors: pure functions from sample ids and scores to the chosen ids (a `Selection`)."""
