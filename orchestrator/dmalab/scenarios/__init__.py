"""Scenarios: sequences of steps driven on a machine, with byte-exact checks and verdicts."""
