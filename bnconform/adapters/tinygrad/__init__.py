"""tinygrad adapter: tinygrad.nn.BatchNorm under its TRAINING context switch (module nn)."""
