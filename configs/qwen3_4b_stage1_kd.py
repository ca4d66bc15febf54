"""The paper's stage 1: off-policy KD of Qwen3-4B-Instruct-2507 on the teacher's answers.

Loss 0.5 x forward KL (teacher Qwen3-30B-A3B-Instruct-2507, teacher-forced on its own answer)
+ 0.5 x cross-entropy on that answer, lr 2e-5, one epoch over ~20k teacher answers. The data
file holds one JSON object per line with the prompt and the teacher's answer in
data.completion_field ('solution'). At the end the student is written to WORKDIR/export_hf:
the OPD configs' model.path (configs/qwen3_30b_a3b_to_4b*.py).
  python -m rockjax.main --config=configs/qwen3_4b_stage1_kd.py --workdir=gs://BUCKET/stage1 \\
      --config.model.path=/ckpt/Qwen3-4B-Instruct-2507 --config.teacher.path=/ckpt/Qwen3-30B-A3B \\
      --config.data.train_path=/data/teacher_answers.jsonl
Dry run (no weights; per-device memory on the declared mesh):
  python -m rockjax.main --config=configs/qwen3_4b_stage1_kd.py --dry_run
The paper states the loss mix, the learning rate and the data size only; the optimiser, the
schedule and the 8800-token length follow the OPD stage, and 4 sequences a step is our choice
(docs/paper_protocol.md, "Stage 1").
Expected: falling opd/kl (forward KL to the teacher) and opd/loss; the paper reports no
stage-1 numbers of its own.
"""

from configs import qwen3_30b_a3b_to_4b


def get_config():
  c = qwen3_30b_a3b_to_4b.get_config()  # same models, mesh, optimiser and lengths
  c.model.path = "/path/to/Qwen3-4B-Instruct-2507"  # the base model: stage 1 starts here
  c.opd.mode = "off_policy"
  c.opd.kd_ratio = 0.5  # 0.5 x forward KL + 0.5 x CE
  c.opd.updates_per_rollout = 1  # given completions, no rollouts: one update per batch
  c.opd.normalizer = "tokens"  # no frozen tokens in stage 1: the plain token mean
  c.opt.lr = 2e-5
  c.data.num_train_prompts = 20_000  # dry-run hint: "20k" teacher answers in the paper
  c.data.prompts_per_step = 4  # not stated in the paper: the OPD stage's 4 sequences an update
  c.data.max_len = 800 + 8000  # prompt + answer, as in OPD; padded to 9216 (data.pad_to_multiple)
  c.analysis.enabled = False  # rocks are detected on the OPD student
  return c
