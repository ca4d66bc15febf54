"""rockjax: on-policy distillation in JAX that finds, measures and bypasses Rock Tokens.

Importing rockjax changes nothing process-wide: the entry points (rockjax.main,
rockjax.analyze) call `rockjax.cli.setup_process()` for XLA_FLAGS and log filters.
"""

__version__ = "0.1.0"
