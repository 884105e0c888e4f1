"""Molecular dynamics on top of the calculator: driver, HDF5 output, reports."""
