"""Stage 6, execution: which cells a run contains and how they run, each framework in its host.

Owns the selection of backends and devices from names and metadata alone (:mod:`.selection`),
planning cells and settling those the controller can decide alone (:mod:`.plan`), the host
processes that import a framework once and judge cells (:mod:`.host`), the parsed case files they
share across processes (:mod:`.case_cache`), their controller-side
handles (:mod:`.controller`), the scheduler behind ``bnconform run`` (:mod:`.scheduler`) and the
single-process developer loop (``python -m bnconform.execution.inprocess NAME``).

May import: case format, reference, judging, specs, adapters.
"""
