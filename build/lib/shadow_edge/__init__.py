"""shadow-edge: export ShadowPEFT models to ONNX bundles and run them on edge CPUs.

    shadow_edge.export(checkpoint, out)         torch side, needs the `export` extra
    shadow_edge.load(bundle, mode="attached")   torch-free runtime
    shadow_edge.load_cascade(bundle, remote=None) the detached shadow first, escalating when unsure
    shadow_edge.load_speculative(bundle)        attached greedy output, the shadow drafting

Both are imported lazily so that `import shadow_edge` never pulls in torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"


def export(*args: Any, **kwargs: Any):
    from .exporters.export import export as _export

    return _export(*args, **kwargs)


export.__doc__ = "See shadow_edge.exporters.export.export."


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
