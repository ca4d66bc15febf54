"""README.md's Python example runs as written and its two losses are the same reverse KL."""

import contextlib
import io
import pathlib
import re

import numpy as np

from tests.fixtures import REPO

README = pathlib.Path(REPO) / "README.md"


def readme_python_blocks() -> list[str]:
  """The bodies of README.md's ```python code blocks, in order."""
  return re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.M | re.S)


def test_readme_has_one_python_example():
  assert len(readme_python_blocks()) == 1


def test_readme_example_runs_and_losses_agree():
  namespace: dict = {"__name__": "readme_example"}
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    exec(compile(readme_python_blocks()[0], str(README), "exec"), namespace)  # noqa: S102
  printed = stdout.getvalue()
  assert "chunked" in printed and "fused" in printed, printed

  loss, fused_loss = float(namespace["loss"]), float(namespace["fused_loss"])
  assert np.isfinite(loss) and np.isfinite(fused_loss)
  assert loss > 0  # random student and teacher differ
  np.testing.assert_allclose(fused_loss, loss, rtol=1e-5)
  for g_chunked, g_fused in zip(namespace["grads"], namespace["fused_grads"]):
    np.testing.assert_allclose(np.asarray(g_fused), np.asarray(g_chunked), rtol=1e-4, atol=1e-6)

  # Both equal the token-mean reverse KL over the masked positions, in float64 numpy.
  h_s, w_s, h_t, w_t, mask = (np.asarray(a, np.float64) for a in namespace["args"])

  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  logp_s, logp_t = log_softmax(h_s @ w_s), log_softmax(h_t @ w_t)
  kl = (np.exp(logp_s) * (logp_s - logp_t)).sum(-1)
  np.testing.assert_allclose(loss, (kl * mask).sum() / mask.sum(), rtol=1e-5)
