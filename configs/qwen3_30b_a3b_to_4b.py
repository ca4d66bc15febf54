"""The paper's Original OPD: Qwen3-30B-A3B-Instruct-2507 (MoE) teaches Qwen3-4B-Instruct-2507.

Launch on 8 accelerators (one host; add --distributed on a multi-host pod):
  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b.py --workdir=gs://BUCKET/opd \
      --config.model.path=/ckpt/Qwen3-4B-stage1 --config.teacher.path=/ckpt/Qwen3-30B-A3B \
      --config.data.train_path=/data/openthoughts3_math.jsonl
Dry run (no weights; per-device memory on the declared mesh):
  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b.py --dry_run
and the HBM per TPU v5p chip, compiled for the topology by libtpu (pip install -e ".[aot]"):
  python -m rockjax.main --config=configs/qwen3_30b_a3b_to_4b.py --dry_run --aot_topology=v5p:2x2x2
Expected (docs/method.md, "Rock-Freeze" and "Rock Tokens"): AIME24/AIME25/HMMT25 pass@1
average 48.1 after OPD; the rock statistics select ~100 ids covering ~60% of the corpus KL.
"""

from configs import default

QWEN3_VOCAB = 151936


def get_config():
  c = default.get_config()
  c.steps = 200  # the paper does not state its OPD step count; set for your budget
  c.log_every = 1
  # Student: Qwen3-4B-Instruct-2507 after stage-1 KD (arch used by dry runs; the HF dir wins).
  c.model.source, c.model.path = "hf", "/path/to/Qwen3-4B-stage1"
  c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
  # Remat 'full' keeps one [B, L, 2560] bf16 input per layer (36 layers x 4 rows x 9k tokens
  # ~ 6.6 GB, split over the batch's devices) and recomputes each layer once in the backward
  # pass (~1/3 more student compute). 'dots_saveable' skips most of that recompute but also
  # keeps every projection output (q/k/v/o, gate/up/down: ~12x the layer input, ~80 GB here),
  # which does not fit next to the 30B teacher at 8k-token rollouts; use it for short ones.
  c.model.remat = "full"
  # model.mlp_chunk stays 0 (off): 1024 saves ~2 GiB per 9k-token row in a layer's backward
  # pass but costs one extra MLP forward per layer; set it if that backward is your peak.
  c.model.arch.update(
    family="qwen3",
    vocab_size=QWEN3_VOCAB,
    hidden_size=2560,
    intermediate_size=9728,
    num_layers=36,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
    rope_theta=5_000_000.0,
  )
  # Teacher: Qwen3-30B-A3B-Instruct-2507, 128 experts, top-8, normalised routing.
  c.teacher.source, c.teacher.path = "hf", "/path/to/Qwen3-30B-A3B-Instruct-2507"
  c.teacher.dtype, c.teacher.param_dtype = "bfloat16", "bfloat16"
  c.teacher.arch.update(
    family="qwen3_moe",
    vocab_size=QWEN3_VOCAB,
    hidden_size=2048,
    intermediate_size=6144,
    num_layers=48,
    num_heads=32,
    num_kv_heads=4,
    head_dim=128,
    tie_word_embeddings=False,
    rope_theta=10_000_000.0,
    num_experts=128,
    num_experts_per_tok=8,
    moe_intermediate_size=768,
    norm_topk_prob=True,
  )
  c.opd.mode, c.opd.divergence = "on_policy", "reverse_kl"
  c.opd.samples_per_prompt = 4  # global batch 4 sequences = 1 prompt x 4 samples
  c.opd.max_new_tokens = 8000
  c.opd.grad_norm_metric = False  # two extra head passes per step at 151,936 ids
  c.opd.loss_sharding = "vocab"  # each chip keeps 151,936 / 8 head columns, no head gather
  # Rollouts from a bf16 copy on every chip: 4.0B params x 2 bytes = 7.5 GiB per chip while
  # decoding (freed before the update), no weight gathers in the 8000 decode steps.
  c.opd.rollout_dtype, c.opd.rollout_sharding = "bfloat16", "replicated"
  c.rock.mode = "off"  # statistics are still tracked every step
  c.opt.update(lr=2e-6, end_lr=1e-8, warmup_frac=0.05, b1=0.9, b2=0.98, weight_decay=0.0, clip=1.0)
  c.data.task = ""
  c.data.prompts_per_step = 1
  c.data.max_prompt_len = 1024
  c.data.pad_to_multiple = 512  # 1024 + 8000 = 9024 tokens -> 9216 = 18 x 512
  # 4 rows cannot fill 8 chips: rows over fsdp 4 and the 9216 tokens over context 2 (sequence
  # sharding, K/V gathered in attention), so no chip repeats another's work.
  c.mesh.update(data=1, fsdp=4, context=2, tensor=1, num_devices=8)
  c.ckpt.every = 50
  c.eval.every = 0  # AIME/HMMT evaluation runs separately on the exported student
  return c
