"""PaddlePaddle adapters: nn.BatchNorm1D/2D/3D layers and nn.functional.batch_norm, sharing helpers in common."""
