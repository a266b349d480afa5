"""mtfc: Mesh TensorFlow's named-dimension model parallelism on StableHLO and PJRT.

``import mtfc as mtf`` gives the DSL: `Dim`, `Shape`, ops (`einsum`,
`reduce_sum`, `softmax`, ...), `layers`, `get_variable`, `init`, `entry`,
`Input`, `scope`, and autodiff (`grad`, `value_and_grad`, `stop_gradient`,
`trainable_variables`), `is_training`, `tap`, and `eager` (op-by-op runs).

The DSL (and with it jax) is imported on first use of one of its names
(PEP 562 module ``__getattr__``), so ``import mtfc.errors`` and the command
line's ``--help`` stay light; ``mtf.Dim`` and ``from mtfc import einsum``
work as if everything had been imported eagerly.

XLA's C++ warnings are silenced unless ``TF_CPP_MIN_LOG_LEVEL`` is already set
(GSPMD's deprecation notice would otherwise open every run).
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

# name -> the module defining it (the DSL's public names, imported lazily)
_OPS = (
    "abs add broadcast cast concat constant cumsum divide einsum equal exp floor gather gelu greater greater_equal iota "
    "less less_equal log log_softmax logical_and logical_not logical_or maximum minimum multiply negative "
    "not_equal one_hot ones pad power range_ reduce_logsumexp reduce_max reduce_mean reduce_min reduce_sum relu "
    "rename_dimension replace_dimensions reshape rsqrt shift sigmoid sign slice softmax sqrt square stop_gradient "
    "subtract tanh transpose where zeros"
).split()
_LAZY = {
    "MtfcError": "mtfc.errors",
    "Dim": "mtfc.frontend.dims",
    "Shape": "mtfc.frontend.dims",
    "Tensor": "mtfc.frontend.graph",
    "recompute": "mtfc.frontend.graph",
    "stack_variables": "mtfc.frontend.graph",
    "scan": "mtfc.frontend.scan",
    "is_training": "mtfc.frontend.graph",
    "scope": "mtfc.frontend.graph",
    "tap": "mtfc.frontend.tap",
    "grad": "mtfc.frontend.autodiff",
    "eager": "mtfc.frontend.eager",
    "value_and_grad": "mtfc.frontend.autodiff",
    **{name: "mtfc.frontend.model"
       for name in ("Entry", "Input", "entry", "get_variable", "init", "trace", "trainable_variables")},
    **{name: "mtfc.frontend.ops" for name in _OPS},
    **{name: "mtfc.frontend.conv" for name in ("conv", "conv1d", "conv2d", "conv3d", "conv_transpose")},
    **{name: "mtfc.frontend.pooling" for name in ("max_pool", "avg_pool", "sum_pool")},
}
_SUBMODULES = {"layers": "mtfc.frontend.layers"}

__all__ = sorted([*_LAZY, *_SUBMODULES])


def __getattr__(name: str):
    """Import the DSL name `name` on first use and keep it as a module attribute."""
    if name in _SUBMODULES:
        value = _importlib.import_module(_SUBMODULES[name])
    elif name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'mtfc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
