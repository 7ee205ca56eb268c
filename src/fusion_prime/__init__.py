"""Fusion Prime: back end of a digital-asset treasury and settlement platform."""

__version__ = "0.1.0"
