"""Compiled recurrent-network kernels: NumPy arrays in, NumPy arrays out."""

__version__ = "0.1.0"
