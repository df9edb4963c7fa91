"""Stage 8, interfaces: the ways a person drives bnconform.

Owns the ``bnconform`` command line (:mod:`.cli` builds the parser; :mod:`.subcommands` holds
run, check, list, report, diff and bench; :mod:`.usage` the one-line user error they share),
the pytest plugin and its xdist scheduler (:mod:`.pytest_plugin`, :mod:`.xdist_scheduling`),
and the tools built on the stages: :mod:`.bench`, :mod:`.fuzz` with its search space
(:mod:`.fuzz_space`), :mod:`.port` with its parameter translation (:mod:`.port_translation`)
and :mod:`.listing`.

May import: every stage. Nothing imports it.
"""
