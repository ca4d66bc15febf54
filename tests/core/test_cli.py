"""rockjax/cli.py: an unknown config override's did-you-mean (difflib, renamed fields, and
other trainers' names for a field)."""

import pytest

from configs import tiny
from rockjax import cli, errors
from tests.fixtures import assert_one_line_error
from tests.fixtures import cli as run_cli


@pytest.mark.parametrize(
  "override, meant",
  [
    ("opt.learning_rate", "opt.lr"),
    ("learning_rate", "opt.lr"),  # no group: the field with that last part
    ("opt.max_grad_norm", "opt.clip"),
    ("max_steps", "steps"),
    ("rock.lamda", "rock.lam"),  # difflib
    ("opt.grad_accum", "opt.micro_batches"),  # renamed
  ],
)
def test_unknown_override_suggests_the_field_meant(override, meant):
  with pytest.raises(errors.ConfigError) as e:
    cli._check_overrides(tiny.get_config(), ["main", f"--config.{override}=1"])
  assert str(e.value) == f"unknown config field {override!r} (did you mean {meant!r}?)"


def test_the_command_line_names_opt_lr_for_learning_rate(tmp_path):
  proc = run_cli(
    "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.opt.learning_rate=1e-3"
  )
  assert_one_line_error(proc, "unknown config field 'opt.learning_rate' (did you mean 'opt.lr'?)")
