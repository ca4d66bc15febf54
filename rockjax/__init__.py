"""rockjax: on-policy distillation in JAX that finds, measures and bypasses Rock Tokens."""

__version__ = "0.1.0"
