"""Training and evaluation of potentials on reference data."""
