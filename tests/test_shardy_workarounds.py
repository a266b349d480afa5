"""The registry of Shardy workarounds (mtfc/passes/shardy/workarounds.py):
every entry is documented and has its lit test, MTFC_SDY_SKIP_WORKAROUNDS
disables entries (an unknown name is one line), and with a workaround
skipped the known wrong answer comes back -- checked by running the
per-device program against NumPy."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes import run_passes
from mtfc.passes.shardy import workarounds
from mtfc.runtime.execute import Program

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIT = ROOT / "lit_tests" / "shardy"


@pytest.mark.parametrize("name", list(workarounds.WORKAROUNDS))
def test_each_workaround_has_a_lit_test_and_a_doc_row(name):
    w = workarounds.WORKAROUNDS[name]
    assert w.stage in workarounds.STAGES and w.works_around and callable(w.apply)
    text = (LIT / f"workaround-{name}.mlir").read_text()
    assert f"`{name}`" in text and "RUN:" in text
    assert f"| `{name}` |" in (ROOT / "docs" / "passes" / "shardy.md").read_text()


def test_skip_list_parsing():
    assert workarounds.skipped({}) == frozenset()
    assert workarounds.skipped({workarounds.ENV: " fix-reducers, prime-mesh ,"}) == {"fix-reducers", "prime-mesh"}
    with pytest.raises(MtfcError) as e:
        workarounds.skipped({workarounds.ENV: "fix-reducers,no-such"})
    assert str(e.value).splitlines() == [str(e.value)]
    assert "'no-such'" in str(e.value) and workarounds.ENV in str(e.value)


def _run(path: pathlib.Path, data: dict) -> dict:
    module = mir.parse_module(path.read_text(), mir.new_context())
    run_passes(module, ["sdy-partition"])
    return Program(module).run(data).outputs


@pytest.mark.parametrize("name, lit, output, reference", [
    ("fix-reducers", "workaround-fix-reducers.mlir", "max", lambda x: x.max(axis=1)),
    ("prime-mesh", "workaround-prime-mesh.mlir", "renamed", lambda x: x),
])
def test_skipping_brings_the_wrong_answer_back(monkeypatch, name, lit, output, reference):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    arg = "x" if name == "fix-reducers" else "z"
    np.testing.assert_array_equal(_run(LIT / lit, {arg: x})[output], reference(x))
    monkeypatch.setenv(workarounds.ENV, name)
    try:
        got = _run(LIT / lit, {arg: x})[output]
    except MtfcError as e:  # the runner's own replica check caught it
        assert "disagree" in str(e), e
        return
    assert not np.array_equal(got, reference(x))
