"""The automatic layout search (issue 12): candidate layouts for a global
module and mesh (`space`), their predicted cost (`cost`: per-device compute,
collectives from `mtfc.passes.layout_cost.predict`, peak memory), the search
(`search`), the machine the cost is predicted for (`network`: a `Network` of
per-device FLOP/s and per-axis latency and bandwidth), and the check of the
model against the machine: `measure` (compile and run candidates, predicted
against measured step time, rank correlation) and `calibrate` (fit a
`Network` from such measurements).  It sits above `mtfc/passes/` and, for
measuring, above `mtfc/runtime/`; docs/layout-search.md."""
