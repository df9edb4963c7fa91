"""JAX-family adapters: flax (linen, nnx), haiku, equinox, sharing helpers in common."""
