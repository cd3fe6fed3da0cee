"""alpr: automatic license plate recognition pipeline."""

__version__ = "0.1.0"
