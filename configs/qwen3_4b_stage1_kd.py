"""The paper's stage 1: off-policy KD of Qwen3-4B-Instruct-2507 on the teacher's answers.

Loss 0.5 x forward KL (teacher Qwen3-30B-A3B-Instruct-2507, teacher-forced on its own answer)
+ 0.5 x cross-entropy on that answer, over ~20k teacher answers. The authors' appendix gives
the rest: global batch 128, max length 16,384 with sample packing, 1 epoch, lr 2e-5, 5%
warm-up. Here a step is 128 packed rows of 16,384 tokens (data.pack: several prompt + answer
sequences per row, each attending only to itself, RoPE positions restarting at 0; docs/
running.md, "Sample packing"); the optimiser's other settings and the 800-token prompt cap
follow the OPD stage (docs/paper_protocol.md, "Stage 1"). The data file holds one JSON object
per line with the prompt and the teacher's answer in data.completion_field ('solution'). At
the end the student is written to WORKDIR/export_hf: the OPD configs' model.path
(configs/qwen3_30b_a3b_to_4b*.py).
  python -m rockjax.main --config=configs/qwen3_4b_stage1_kd.py --workdir=gs://BUCKET/stage1 \\
      --config.model.path=/ckpt/Qwen3-4B-Instruct-2507 --config.teacher.path=/ckpt/Qwen3-30B-A3B \\
      --config.data.train_path=/data/teacher_answers.jsonl
Run length: one epoch is the packed rows of the data / 128 steps, which only the data decides
(the answers' lengths). A dry run sizes the schedule from the data.num_train_prompts hint as
if every answer were a row (157 steps, an upper bound); 20,000 answers of ~3,000 tokens fill
~3,900 rows at ~95% (about 31 steps), of ~6,000 tokens ~7,700 rows (about 61 steps).
Dry run (no weights; per-device memory on the declared mesh):
  python -m rockjax.main --config=configs/qwen3_4b_stage1_kd.py --dry_run
and the HBM per TPU v5p chip, compiled for the topology by libtpu (pip install -e ".[aot]"):
  python -m rockjax.main --config=configs/qwen3_4b_stage1_kd.py --dry_run --aot_topology=v5p:2x2x2
Expected: falling opd/kl (forward KL to the teacher) and opd/loss; the paper reports no
stage-1 numbers of its own.
"""

from configs import qwen3_30b_a3b_to_4b


def get_config():
  c = qwen3_30b_a3b_to_4b.get_config()  # same models, mesh and optimiser shape
  c.model.path = "/path/to/Qwen3-4B-Instruct-2507"  # the base model: stage 1 starts here
  c.opd.mode = "off_policy"
  c.opd.kd_ratio = 0.5  # 0.5 x forward KL + 0.5 x CE
  c.opd.updates_per_rollout = 1  # given completions, no rollouts: one update per batch
  c.opd.normalizer = "tokens"  # the token mean over every answer token of the batch
  c.opt.lr = 2e-5  # the appendix
  c.opt.warmup_frac = 0.05  # the appendix: 5% warm-up
  c.data.epochs = 1.0  # the appendix: 1 epoch (of packed rows, see the docstring)
  c.data.num_train_prompts = 20_000  # dry-run hint: "20k" teacher answers in the paper
  c.data.prompts_per_step = 128  # the appendix's global batch 128: packed rows a step
  c.data.max_len = 16_384  # the appendix's max length; a multiple of data.pad_to_multiple
  c.data.pack = True  # the appendix's sample packing
  # 128 rows = 8 micro-batches of 16: 4 rows of 16,384 tokens per fsdp shard, each split over
  # context 2 (8,192 tokens a chip). AOT on v5p:2x2x2: 37.1 GiB peak per chip (32 micro-batches
  # of 4: 25.2 GiB); the micro-batch rows must divide by data x fsdp = 4.
  c.opt.micro_batches = 8
  c.analysis.enabled = False  # rocks are detected on the OPD student
  return c
