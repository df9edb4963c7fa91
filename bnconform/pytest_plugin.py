"""pytest plugin: the conformance matrix as tests (filled in by the runner work)."""
