"""PyTorch adapters: nn.BatchNorm modules and F.batch_norm, sharing helpers in common."""
