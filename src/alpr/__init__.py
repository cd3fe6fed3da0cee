"""alpr: automatic license plate recognition pipeline."""

__version__ = "0.1.0"
__all__ = ["Plate", "PlateReader", "ReadOptions", "__version__"]


def __getattr__(name: str):
    # Lazy: `import alpr` stays light; torch and mmdet load only when the reader is used.
    if name == "PlateReader":
        from alpr.reader import PlateReader

        return PlateReader
    if name in ("Plate", "ReadOptions"):
        from alpr import postprocess

        return getattr(postprocess, name)
    raise AttributeError(f"module 'alpr' has no attribute {name!r}")
