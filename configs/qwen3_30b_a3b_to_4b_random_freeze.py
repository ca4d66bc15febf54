"""The paper's Random control: freeze 100 non-rock ids frequency-matched to the frozen rocks.

Only rock.* fields differ from configs/qwen3_30b_a3b_to_4b.py (the Original). The control
list depends on token frequencies of your own corpus (the paper matched by a minimum-cost
assignment on |log freq|). The analysis of an Original run writes it beside the rock list,
as random_control_ids.txt (`rockjax.analysis.controls.frequency_matched`): matched one-to-one
to the list Rock-Freeze freezes (analysis.control_match_list, the published 100 ids) and
disjoint from it and from that run's own top-100 rocks. Pass it as rock.list_path:
  python -m rockjax.analyze --config=configs/qwen3_30b_a3b_to_4b.py --workdir=DIR_ORIGINAL
  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b_random_freeze.py --workdir=DIR \\
      --config.rock.list_path=DIR_ORIGINAL/analysis/random_control_ids.txt \\
      --config.model.path=... --config.teacher.path=... --config.data.train_path=...
For the authors' freeze-script length pass --config.opd.max_new_tokens=1024 to all three
paper configs. docs/paper_protocol.md gives every setting and its source.
Expected (docs/method.md, "Rock-Freeze"): the paper reports an AIME24/25/HMMT25 average of
38.9 for this regime (below both Original and Rock-Freeze); this config reproduces the
regime, not that number.
"""

from configs import qwen3_30b_a3b_to_4b_rock_freeze


def get_config():
  c = qwen3_30b_a3b_to_4b_rock_freeze.get_config()
  c.rock.list_path = ""  # required: the frequency-matched control list (see docstring)
  return c
