"""Side-by-side measurements of mtfc against plain JAX (`python -m benchmarks.compare`)."""
