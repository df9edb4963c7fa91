"""Stage 1, the case format: what a case *is* and how it is read and written.

Owns the canonical model (:mod:`.model`: Config, State, Step, Case and every knob's meaning), the
dtypes a case may use (:mod:`.dtypes`), the bit-exact array encoding (:mod:`.encoding`), reading
and writing case files (:mod:`.casefile`), the JSON Schema (``schema.json``) with its compiled
fast check (:mod:`.schema_check`), and validation with one-line errors (:mod:`.validation`).

May import: nothing else of bnconform. Everything else builds on it.
"""
