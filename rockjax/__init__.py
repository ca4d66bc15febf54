"""rockjax: on-policy distillation in JAX that finds, measures and bypasses Rock Tokens.

Importing rockjax changes nothing process-wide: the entry points (rockjax.main,
rockjax.analyze) call `rockjax.cli.setup_process()` for XLA_FLAGS, log filters and, where
libtpu is installed but no TPU is attached, JAX_PLATFORMS=cpu (no libtpu start-up warnings).
"""

__version__ = "0.1.0"
