"""What leaves the compiler: MLIR text and bytecode, portable artifacts, reports."""
