"""The processes that save or restore a checkpoint together, and how they agree.

Every process of a job (``jax.distributed``) calls `save` with the same
arguments in the same order; the steps where they must agree (the temporary
process 0 made, every process's digests and errors, process 0's commit) go
through jax.distributed's key-value store, each wait bounded by the save's
timeout.  A single process agrees with itself at no cost.
"""

from __future__ import annotations

import itertools
import json

import jax

from mtfc.errors import MtfcError

_SAVES = itertools.count()  # the same sequence in every process: saves are collective


class Group:
    """This process's view of one collective save: `share` a JSON value and get
    every process's, or `first` to get process 0's."""

    def __init__(self, shown: str, timeout: float):
        self.index = jax.process_index()
        self.count = jax.process_count()
        self.shown = shown
        self.timeout = timeout
        self.prefix = f"mtfc/checkpoint/{next(_SAVES)}"
        self.client = None
        if self.count > 1:
            from jax._src import distributed

            self.client = distributed.global_state.client

    def _get(self, key: str, process: int, what: str) -> str:
        try:
            return self.client.blocking_key_value_get(key, int(self.timeout * 1000))
        except Exception:  # noqa: BLE001 - jax raises JaxRuntimeError (DEADLINE_EXCEEDED) on a timeout
            raise MtfcError(f"{self.shown}: process {process} did not {what} within {self.timeout:g} s "
                            "(MTFC_CHECKPOINT_TIMEOUT); the previous checkpoint is kept") from None

    def share(self, step: str, value, what: str) -> list:
        """Every process's `value` (JSON), in process order."""
        if self.count == 1:
            return [value]
        self.client.key_value_set(f"{self.prefix}/{step}/{self.index}", json.dumps(value))
        return [value if p == self.index else json.loads(self._get(f"{self.prefix}/{step}/{p}", p, what))
                for p in range(self.count)]

    def first(self, step: str, value, what: str):
        """Process 0's `value` (JSON; the others pass None)."""
        if self.count == 1:
            return value
        key = f"{self.prefix}/{step}"
        if self.index == 0:
            self.client.key_value_set(key, json.dumps(value))
            return value
        return json.loads(self._get(key, 0, what))
