"""ferbench: a reproducible, leak-free facial-expression-recognition benchmark."""

__version__ = "0.1.0"
