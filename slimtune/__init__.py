"""slimtune: the command-line shell over spaces, compress, search and cluster."""

__version__ = "0.1.0"
