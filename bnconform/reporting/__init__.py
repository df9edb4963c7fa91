"""Stage 7, reporting: what a run leaves behind for people and machines.

Owns reports/results.json (:mod:`.results`: build, read, merge, diff), the semantics profile
measured from the verdicts (:mod:`.profile`), the rendered pages (:mod:`.pages`:
conformance.md, conformance-details.md, heatmap.svg) and where and how they are written,
all-or-nothing (:mod:`.writing`).

May import: every stage below it (case format, reference, judging, specs, adapters, execution).
"""
