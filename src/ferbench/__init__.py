"""ferbench: a reproducible, leak-free facial-expression-recognition benchmark.

`from ferbench import predict; predict(images, model)` classifies every face of still images
(ferbench.prediction); it is imported on first use, so `import ferbench` stays light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "predict":
        from ferbench.prediction import predict

        return predict
    raise AttributeError(f"module 'ferbench' has no attribute {name!r}")
