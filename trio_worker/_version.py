"""The package version, read by the build backend and by ``trio_worker.__version__``."""

__version__ = "0.1.0"
