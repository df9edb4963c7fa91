"""MLX adapter: mlx.nn.BatchNorm driven through train() and eval() (module nn)."""
