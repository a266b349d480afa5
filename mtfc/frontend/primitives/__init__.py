"""Primitives by family; importing this package fills `PRIMITIVES`."""

from mtfc.frontend.primitives import elementwise, structural, contraction, creation, convolution, window, loop  # noqa: F401
from mtfc.frontend.primitives.base import PRIMITIVES, Primitive, bind, bind1, register  # noqa: F401
