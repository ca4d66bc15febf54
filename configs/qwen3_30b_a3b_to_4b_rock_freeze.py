"""The paper's Rock-Freeze run: the published 100 Qwen3 rock ids get weight 0 from the start of OPD.

Only rock.* fields differ from configs/qwen3_30b_a3b_to_4b.py (the Original), so the two runs
compare freezing alone (tests/contracts/test_paper_protocol.py checks it):
  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b_rock_freeze.py --workdir=DIR \\
      --config.model.path=STAGE1_DIR/export_hf --config.teacher.path=... \\
      --config.data.train_path=... --config.data.eval_path=/data/math500.jsonl
For the authors' freeze-script length pass --config.opd.max_new_tokens=1024 to all three
paper configs. docs/paper_protocol.md gives every setting and its source.
Expected (docs/method.md, "Rock-Freeze"): the paper reports an AIME24/25/HMMT25 average of
44.3 for this regime (vs 48.1 Original, 38.9 Random), evaluated on the exported student; this
config reproduces the regime, not that number (the prompt set is unreleased). The paper's
1.4-1.7x speed-up is not explained by the authors' code (it still scores every token).
"""

from configs import qwen3_30b_a3b_to_4b


def get_config():
  c = qwen3_30b_a3b_to_4b.get_config()
  c.rock.mode = "static"
  c.rock.list_path = "rockjax/resources/qwen3_paper_rocks.txt"  # docs/method.md, rank order
  c.rock.lam = 0.0
  return c
