"""Stage 3, judging: the rules by which one cell becomes exactly one verdict.

Owns the verdict record (:mod:`.verdict`), the NaN-aware comparison with the oracle
(:mod:`.compare`), the vocabulary adapters declare themselves in -- capabilities as data
(:mod:`.capabilities`) and declarative cell selectors (:mod:`.selectors`) -- and the judge
(:mod:`.judge`), which runs an adapter on a case and verifies every declared deviation.
Adapters speak this vocabulary, so it sits below them; the judge takes any object with the
adapter contract and imports no adapter.

May import: :mod:`bnconform.caseformat`, :mod:`bnconform.reference`.
"""
