"""mtfc: Mesh TensorFlow's named-dimension model parallelism on StableHLO and PJRT.

``import mtfc as mtf`` gives the DSL: `Dim`, `Shape`, ops (`einsum`,
`reduce_sum`, `softmax`, ...), `layers`, `get_variable`, `init`, `entry`,
`Input`, `scope`, and autodiff (`grad`, `value_and_grad`, `stop_gradient`,
`trainable_variables`).

XLA's C++ warnings are silenced unless ``TF_CPP_MIN_LOG_LEVEL`` is already set
(GSPMD's deprecation notice would otherwise open every run).
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mtfc.errors import MtfcError
from mtfc.frontend import layers
from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import Tensor, recompute, scope
from mtfc.frontend.autodiff import grad, value_and_grad
from mtfc.frontend.model import Entry, Input, entry, get_variable, init, trace, trainable_variables
from mtfc.frontend.ops import (
    abs,
    add,
    broadcast,
    cast,
    concat,
    constant,
    divide,
    einsum,
    equal,
    exp,
    floor,
    gather,
    gelu,
    greater,
    greater_equal,
    iota,
    less,
    less_equal,
    log,
    log_softmax,
    logical_and,
    logical_not,
    logical_or,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    one_hot,
    ones,
    pad,
    power,
    range_,
    reduce_logsumexp,
    reduce_max,
    reduce_mean,
    reduce_min,
    reduce_sum,
    relu,
    rename_dimension,
    replace_dimensions,
    reshape,
    rsqrt,
    shift,
    sigmoid,
    sign,
    slice,
    softmax,
    sqrt,
    square,
    stop_gradient,
    subtract,
    tanh,
    transpose,
    where,
    zeros,
)

__version__ = "0.1.0"
