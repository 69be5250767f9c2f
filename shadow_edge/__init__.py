"""shadow-edge: export ShadowPEFT models to ONNX bundles and run them on edge CPUs.

    shadow_edge.export(checkpoint, out)         torch side, needs the `export` extra
    shadow_edge.open(bundle, mode="attached")   torch-free runtime, every mode: attached, detached,
                                                base, cascade, speculative (runtimes/modes.py)
    shadow_edge.load(bundle, mode="attached")   the same for the engine modes (attached, detached, base)
    shadow_edge.load_cascade(bundle, remote=None) = open(bundle, "cascade", ...)
    shadow_edge.load_speculative(bundle)        = open(bundle, "speculative", ...)

All are imported lazily so that `import shadow_edge` never pulls in torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"


def export(*args: Any, **kwargs: Any):
    from .exporters.export import export as _export

    return _export(*args, **kwargs)


export.__doc__ = "See shadow_edge.exporters.export.export."


def open(*args: Any, **kwargs: Any):  # noqa: A001 - the package's verb, as in `shadow_edge.open(bundle)`
    from .runtimes.modes import open_model

    return open_model(*args, **kwargs)


open.__doc__ = "See shadow_edge.runtimes.modes.open_model."


def load(*args: Any, **kwargs: Any):
    from .runtimes.model import load as _load

    return _load(*args, **kwargs)


load.__doc__ = "See shadow_edge.runtimes.model.load."


def load_cascade(*args: Any, **kwargs: Any):
    from .runtimes.cascade import load_cascade as _load_cascade

    return _load_cascade(*args, **kwargs)


load_cascade.__doc__ = "See shadow_edge.runtimes.cascade.load_cascade."


def load_speculative(*args: Any, **kwargs: Any):
    from .runtimes.speculative import load_speculative as _load_speculative

    return _load_speculative(*args, **kwargs)


load_speculative.__doc__ = "See shadow_edge.runtimes.speculative.load_speculative."
