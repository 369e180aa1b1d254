"""The zeroth-order optimizer core: the estimator, the update transforms, the reduction
seam, and `ZerothOrderOptimizer`, which composes a direction sampler with a transform.

Import from the submodules (`agzo.core.optimizer`, ...) or from `agzo`; this package
imports nothing itself, so that the samplers and observers it composes may use
`agzo.core.reduce` without a cycle.
"""
