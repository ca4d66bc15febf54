"""The embedded CPU default: the whole OPD pipeline on a synthetic arithmetic task, in minutes.

  python -m rockjax.main --config=configs/demo.py --workdir=/tmp/rockjax_demo

What happens: (1) the task (worked step-by-step solutions) and a tokenizer are written into the
workdir; (2) a 4-layer teacher is trained by SFT on the solutions, exported as a Hugging Face
checkpoint and loaded back through the HF path; (3) a 3-layer student gets the paper's stage 1 (off-policy
KD: forward KL + CE from the teacher), again exported and reloaded; (4) the student is
distilled on-policy (its own rollouts, reverse KL) while the per-id rock statistics are
tracked every step; (5) the run ends with the rock table: ids ranked by Rock Score (Freq x mean KL).
Expected on a 2-core CPU: ~4 minutes. Seen here: teacher pass@1 0.36 after SFT, student 0.09
after stage 1, opd/kl falling from ~1.07 to ~0.86 over the 120 OPD steps, and a rock table
led by digits and '=' (the top 10 ids carry ~80% of the KL): the structure tokens of the
worked solutions, as the paper finds for LaTeX delimiters and digits.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.steps = 120
  c.log_every = 10
  c.model.arch.update(vocab_size=128, hidden_size=96, intermediate_size=192, num_layers=3,
                      num_heads=4, num_kv_heads=2, head_dim=24)
  c.model.source = "kd"  # stage 1: off-policy KD from the teacher, as in the paper
  c.model.stage_steps = 400
  c.model.stage_lr = 3e-3
  c.teacher.source = "sft"
  c.teacher.arch.update(vocab_size=128, hidden_size=128, intermediate_size=256, num_layers=4,
                        num_heads=4, num_kv_heads=2, head_dim=32)
  c.teacher.stage_steps = 1200
  c.teacher.stage_lr = 3e-3
  c.opd.samples_per_prompt = 4
  c.opd.max_new_tokens = 72  # 99% of worked solutions fit (helper measurement: p99 = 65)
  c.opd.chunk_size = 64
  c.opt.lr = 3e-4  # OPD after stage 1 uses a 10x lower rate, like the paper (2e-5 -> 2e-6)
  c.rock.mode = "off"  # track only; try --config.rock.mode=dynamic --config.rock.lam=0
  c.rock.k = 10
  c.rock.min_freq = 2
  c.rock.exclude_top_freq = 0
  c.data.task_size = 2000
  c.data.task_difficulty = "easy"  # a 4-layer CPU teacher reaches ~35% pass@1 here
  c.data.prompts_per_step = 8
  c.data.max_prompt_len = 32
  c.data.max_len = 112
  c.ckpt.every = 60
  c.eval.every = 60
  c.eval.num_prompts = 64
  c.eval.temperature = 0.0  # greedy: a deterministic pass@1 on the CPU
  c.eval.max_new_tokens = 72
  return c
