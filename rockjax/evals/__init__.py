"""The paper's evaluation (python -m rockjax.evaluate): benchmark files in their published
formats, graders (math-verify for the math sets, IFEval's instruction checkers), sampled pass@1
through rockjax's sampler, and the eval.json / eval.md report with paired comparisons."""
