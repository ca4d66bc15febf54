"""The embedded CPU default: the whole OPD pipeline on a synthetic arithmetic task, in minutes.

  python -m rockjax.main --config=configs/demo.py --workdir=/tmp/rockjax_demo

What happens: (1) the task (worked step-by-step solutions) and a tokenizer are written into the
workdir; (2) a 4-layer teacher is trained by SFT on the solutions, exported as a Hugging Face
checkpoint and loaded back through the HF path; (3) a 2-layer student is distilled on-policy
(its own rollouts, reverse KL) while the per-id rock statistics are tracked every step;
(4) the run ends with the rock table: ids ranked by Rock Score (Freq x mean KL).
Expected on a 2-core CPU: ~5-10 minutes; teacher pass@1 well above the random student;
opd/kl falling; rocks dominated by structure tokens ('$', '=', digits, 'So', '\\n').
"""
from configs import default


def get_config():
  c = default.get_config()
  c.steps = 120
  c.log_every = 10
  c.model.arch.update(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16)
  c.teacher.source = "sft"
  c.teacher.arch.update(vocab_size=128, hidden_size=128, intermediate_size=256, num_layers=4,
                        num_heads=4, num_kv_heads=2, head_dim=32)
  c.teacher.sft_steps = 400
  c.teacher.sft_lr = 3e-3
  c.opd.samples_per_prompt = 4
  c.opd.max_new_tokens = 72  # 99% of worked solutions fit (helper measurement: p99 = 65)
  c.opd.chunk_size = 64
  c.opt.lr = 2e-3
  c.rock.mode = "off"  # track only; try --config.rock.mode=dynamic --config.rock.lam=0
  c.rock.k = 10
  c.rock.min_freq = 2
  c.rock.exclude_top_freq = 0
  c.data.task_size = 2000
  c.data.prompts_per_step = 8
  c.data.max_prompt_len = 32
  c.data.max_len = 112
  c.ckpt.every = 60
  c.eval.every = 60
  c.eval.num_prompts = 64
  c.eval.temperature = 0.0  # greedy: a deterministic pass@1 on the CPU
  c.eval.max_new_tokens = 72
  return c
