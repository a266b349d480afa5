"""The named-dimension DSL: dims, tensors, ops, layers, model files, lowering."""
