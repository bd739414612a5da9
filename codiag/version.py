"""The codiag version, in a module of its own so that any part can import it at the top."""
__version__ = "0.1.0"
