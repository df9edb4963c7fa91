"""MindSpore adapter: mindspore.nn.BatchNorm1d / BatchNorm2d cells (module nn)."""
