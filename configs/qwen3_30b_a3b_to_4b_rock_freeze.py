"""The paper's Rock-Freeze: the published 100 Qwen3 rock ids get weight 0 from the start of OPD.

  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b_rock_freeze.py --workdir=DIR \
      --config.model.path=... --config.teacher.path=... --config.data.train_path=...
Expected (docs/method.md, "Rock-Freeze"): AIME24/25/HMMT25 average 44.3 (vs 48.1 Original,
38.9 Random); the paper's 1.4-1.7x speed-up is not explained by its code (it still scores
every token). `opd.normalizer='tokens'` divides by all response tokens; the authors' freeze
code divided each sequence by its kept tokens ('weights' is the batch-wide form).
"""

from configs import qwen3_30b_a3b_to_4b


def get_config():
  c = qwen3_30b_a3b_to_4b.get_config()
  c.opd.max_new_tokens = 1024  # the freeze runs generated up to 1024 tokens
  c.rock.mode = "static"
  c.rock.list_path = "rockjax/resources/qwen3_paper_rocks.txt"  # docs/method.md, rank order
  c.rock.lam = 0.0
  return c
