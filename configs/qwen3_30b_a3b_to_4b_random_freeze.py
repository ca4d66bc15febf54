"""The paper's Random control: freeze 100 non-rock ids frequency-matched to the rocks.

The control list depends on token frequencies of your own corpus (the paper matched by a
minimum-cost assignment on |log freq|). The analysis command writes it beside the rock list,
as random_control_ids.txt, from the detection corpus of an Original run's checkpoint
(`rockjax.analysis.controls.frequency_matched`), then pass it as rock.list_path:
  python -m rockjax.analyze --config=configs/qwen3_30b_a3b_to_4b.py --workdir=DIR_ORIGINAL
  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b_random_freeze.py --workdir=DIR \
      --config.rock.list_path=DIR_ORIGINAL/analysis/random_control_ids.txt \
      --config.model.path=... --config.teacher.path=... --config.data.train_path=...
Expected (docs/method.md, "Rock-Freeze"): AIME24/25/HMMT25 average 38.9 (below both Original
and Rock-Freeze).
"""

from configs import qwen3_30b_a3b_to_4b_rock_freeze


def get_config():
  c = qwen3_30b_a3b_to_4b_rock_freeze.get_config()
  c.rock.list_path = ""  # required: the frequency-matched control list (see docstring)
  return c
