"""Stage 2, the reference: what a conforming Batch Normalization returns, and how exactly.

Owns the NumPy float64 oracle (:mod:`.oracle`: forward pass, running statistics, extensions),
its backward pass (:mod:`.gradients`: dx, dgamma, dbeta), the per-channel reductions both share
(:mod:`.moments`) and the error bounds a result is judged within (:mod:`.tolerance`). No
framework is imported here.

May import: :mod:`bnconform.caseformat`.
"""
