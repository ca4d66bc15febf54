"""Tiny config for tests and smoke runs: random 2-layer models on the synthetic task.

  python -m rockjax.main --config=configs/tiny.py --workdir=/tmp/rj_tiny
Expected: a few seconds per step on a CPU; finite opd/kl; rock/* metrics from step 3 on.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.steps = 6
  c.model.arch.update(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
  )
  c.teacher.arch.update(
    vocab_size=128,
    hidden_size=48,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=12,
  )
  c.opd.chunk_size = 16
  c.opd.samples_per_prompt = 2
  c.opd.max_new_tokens = 12
  c.rock.mode = "dynamic"
  c.rock.k = 5
  c.rock.min_freq = 1
  c.rock.exclude_top_freq = 0
  c.rock.warmup_steps = 2
  c.rock.select_every = 2
  c.data.task_size = 64
  c.data.prompts_per_step = 8
  c.data.max_prompt_len = 24
  c.data.max_len = 64
  c.ckpt.every = 3
  c.eval.every = 0
  c.analysis.enabled = False  # tests and smoke runs; python -m rockjax.analyze runs it on demand
  return c
