"""Default rockjax config: every field documented; experiments import this and override.

Launch (any config in configs/ works the same way; flags override single fields):
  python -m rockjax.main --config=configs/default.py --workdir=/tmp/rockjax \
      --config.steps=20 --config.rock.mode=dynamic

Alone, this default runs OPD between two small random models on the embedded synthetic
arithmetic task (configs/demo.py is the CPU default that first trains a real teacher).
Expected: finite, slowly falling `opd/kl`; `rock/*` metrics once rock.mode != 'off'.

Groups, in the order below: model, teacher, opd, rock, opt, data, mesh (axes data, fsdp,
context, tensor; dcn_* across slices or nodes), ckpt, pipeline, eval, preflight (checks
before step 1), analysis (the rock analysis after the last stage); top-level fields: seed,
steps, log_every, stop_after.
"""

import ml_collections


def model_group(**arch) -> ml_collections.ConfigDict:
  """A model sub-config: where the weights come from, numerics, and the architecture."""
  m = ml_collections.ConfigDict()
  m.source = "random"  # 'random' (init from `arch`) | 'hf' (Hugging Face directory at `path`)
  m.path = ""  # HF checkpoint directory (config.json + *.safetensors) when source == 'hf'
  m.dtype = "float32"  # compute dtype of matmuls ('bfloat16' on TPU/GPU); norms/softmax: fp32
  m.param_dtype = "float32"  # stored parameter dtype
  # What each decoder layer keeps for the backward pass (activation memory vs recompute):
  # 'none' keeps everything; 'full' keeps only the layer input and recomputes the layer (least
  # memory, ~1/3 more compute); 'dots_saveable' keeps the projection matmul outputs and
  # recomputes norms/attention/activations; 'save_names' keeps only the attention output and
  # MLP input; 'offload' moves those two to host memory (TPU/GPU). Legacy: True = 'full',
  # False = 'none' (also as --config.model.remat=True).
  m.remat = "none"
  # Stack the layers' parameters on a leading axis and run them with a scan: the step compiles
  # one layer instead of num_layers (minutes saved at 36-48 layers), same numbers. Qwen3-MoE
  # models whose layers differ (mlp_only_layers / decoder_sparse_step > 1) stay unrolled.
  # Checkpoints keep the structure they were written with: resume with the same setting.
  m.scan_layers = True
  # Attention over whole sequences (training, teacher scoring; decoding always uses 'einsum'):
  # 'auto' = 'splash' on TPU (when the length is a multiple of attention_block), 'cudnn' on
  # GPU with a 16-bit dtype, else 'blocked'. 'einsum' holds full [B, H, L, L] float32 scores
  # (the reference; fine for short sequences); 'blocked' is memory-lean pure XLA (any device).
  m.attention = "auto"  # auto | einsum | blocked | cudnn | splash
  m.attention_block = 512  # query/key block of blocked and splash (splash: a multiple of 128)
  # Token-chunked ("tiled") MLP for long sequences: the MLP (dense SwiGLU or MoE experts) runs
  # over this many positions of each row at a time, each chunk rematerialised in the backward
  # pass, so the [B, L, F] intermediates never exist whole; costs one extra MLP forward. At
  # Qwen3-4B shape, L=9216 (one float32 layer, forward+backward): MLP temp 3.0 GiB unchunked,
  # 1.0 GiB at 2048, 0.55 GiB at 1024. 0 = off (the whole sequence at once).
  m.mlp_chunk = 0
  # Grouped matmul of MoE experts (Qwen3-MoE): 'auto' = 'megablox' (the Pallas TPU kernel) on
  # TPU, 'ragged_dot' (jax.lax.ragged_dot) elsewhere. Under a mesh each device routes only its
  # own tokens (jax.shard_map), whichever backend.
  m.moe_impl = "auto"  # auto | ragged_dot | megablox
  # Expert parallelism: '' (off) keeps every expert on every device (gathered per layer like any
  # FSDP weight); a mesh axis name ('fsdp', 'data', 'tensor') splits the experts over that axis
  # (num_experts a multiple of its size) and sends each routed token to its expert's device and
  # back (all_to_all; the send buffers hold axis size x the routed rows, capacity-free).
  m.moe_experts_axis = ""  # '' | data | fsdp | tensor
  # A preliminary off-policy stage that trains this model first and exports it to HF (used by
  # the CPU demo): source 'sft' (teacher: CE on the task's solutions) or 'kd' (student: the
  # paper's stage 1, stage_kd_ratio*forward_kl + (1-stage_kd_ratio)*CE from the teacher).
  m.stage_steps = 300
  m.stage_lr = 3e-3
  m.stage_kd_ratio = 0.5  # paper stage 1: 0.5
  # Architecture, used when source == 'random' and by dry runs (no weights needed). With
  # source == 'hf' the checkpoint's config.json wins.
  m.arch = ml_collections.ConfigDict(
    dict(
      family="qwen3",  # qwen3 | qwen3_moe | qwen2 | llama
      vocab_size=128,
      hidden_size=64,
      intermediate_size=128,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=16,
      tie_word_embeddings=True,
      rope_theta=10000.0,
      rms_norm_eps=1e-6,
      num_experts=0,
      num_experts_per_tok=0,
      moe_intermediate_size=0,  # qwen3_moe only
      norm_topk_prob=True,
    )
  )
  m.arch.update(arch)
  return m


def get_config() -> ml_collections.ConfigDict:
  """The documented default."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, data order and rollout keys all derive from it
  # Batches trained on (train_step calls: rollout batches on-policy); each makes
  # opd.updates_per_rollout optimiser updates, whatever opt.micro_batches
  c.steps = 50
  c.log_every = 1  # steps between metric lines (JSONL + TensorBoard + progress bar)
  c.stop_after = 0  # end (with a checkpoint) after this step, keeping c.steps' schedule; 0 = off

  c.model = model_group()  # the student (trained)
  c.teacher = model_group(hidden_size=96, num_layers=3)  # frozen; never checkpointed
  # teacher.source: 'random' | 'hf' | 'none' (plain SFT: opd.mode='off_policy', kd_ratio=0) |
  # 'sft' (first train the teacher by SFT on the task, export it to HF, load that).
  # model.source additionally takes 'kd' (stage-1 KD from the teacher first, then OPD).
  c.teacher.source = "random"

  c.opd = ml_collections.ConfigDict()
  c.opd.mode = "on_policy"  # 'on_policy' (student rollouts, OPD) | 'off_policy' (KD/SFT data)
  # on-policy loss: reverse_kl (paper) | forward_kl | jsd | skew_reverse_kl
  c.opd.divergence = "reverse_kl"
  c.opd.jsd_beta = 0.5  # teacher weight in the JSD mixture M = beta*p_t + (1-beta)*p_s
  # skew_reverse_kl = KL(p_s || M), M = skew_alpha*p_t + (1-skew_alpha)*p_s: teacher weight in
  # [0, 1], 1 = reverse_kl; 0.9 is DistiLLM's default (their lambda = 1 - skew_alpha = 0.1)
  c.opd.skew_alpha = 0.9
  c.opd.temperature = 1.0  # divergence temperature (paper: 1)
  c.opd.kd_ratio = 0.5  # off-policy: kd_ratio*forward_kl + (1-kd_ratio)*CE (paper stage 1: 0.5)
  # What the weighted loss sum is divided by (docs/method.md, "Normalisers"): 'tokens' (the
  # batch's response tokens: the authors' Original run) | 'sequence' (mean over sequences of
  # each one's sum / max(kept weight, 1): the authors' freeze runs) | 'weights' (the batch's
  # sum of weights). Under AdamW a constant loss scale nearly cancels; they differ in the
  # per-step frozen share, clipping of the raw gradient norm and per-sequence weighting.
  c.opd.normalizer = "tokens"  # 'tokens' | 'sequence' | 'weights' (the paper baseline: tokens)
  # Memory-lean loss from hidden states, never materialising [B, L, V] logits: the divergence
  # and its gradient in one pass over token blocks (rockjax.losses.fused), CE chunked over V.
  c.opd.chunked = True
  c.opd.chunk_size = 8192  # vocabulary columns per chunk (CE; head-gradient accumulation)
  c.opd.block_size = 512  # tokens per block: working memory ~ 3 * block_size * V floats
  # How the fused loss lays out the LM heads on the mesh: 'tokens' (each device gathers both
  # heads whole) | 'vocab' (each device keeps V/devices columns; log-sum-exps and sums over V
  # combined by collectives; docs/design.md, "Sharding")
  c.opd.loss_sharding = "tokens"
  c.opd.grad_norm_metric = True  # log rock share of per-token logit-grad norm (free if chunked)
  # Rock-Freeze skipping (chunked only; docs/method.md, "Skipping"): the heads and divergence
  # run only on positions of weight > 0, gathered into slots per row group: kept_capacity is
  # their number as a fraction of the response slots (on-policy max_new_tokens per row, else
  # the whole row). 1 skips prompt and padding and never overflows on-policy; 0.6 at lam 0
  # with ~half the response frozen. A batch that overflows runs the full loss (exact).
  c.opd.kept_capacity = 0.0  # in [0, 1]; 0 = off (every position runs the heads)
  # Frozen (weight 0) response positions under skipping: 'forward' (their KL from a
  # forward-only pass: rock statistics unchanged) | 'skip' (no KL: untracked by RockStats)
  c.opd.frozen_kl = "forward"
  c.opd.samples_per_prompt = 4  # rollouts per prompt (paper: 4)
  c.opd.max_new_tokens = 48  # rollout length (paper: 8000; 1024 in the freeze runs)
  # Sequential optimiser updates per rollout batch (authors: 2 prompts x 4 samples -> 2 updates
  # of 4): update u trains on rows u, u+U, ... after update u-1 moved the params (so it is
  # off-policy by u updates); the lr schedule and rock.* step counts count these updates.
  c.opd.updates_per_rollout = 1
  # Rollouts that hit max_new_tokens without an EOS: 'keep' (trained on and counted in the rock
  # statistics like any other) | 'drop' (response mask zeroed: no loss, no statistics; the batch
  # keeps its shape). Either way the metric rollout/truncated counts them.
  c.opd.truncated_rollouts = "keep"
  c.opd.sample_temperature = 1.0  # rollout sampling (paper: 1.0, top_p 1.0)
  c.opd.top_p = 1.0
  c.opd.top_k = 0  # 0 = off
  # Rollouts (and eval.*) sample from a copy of the student made once per step and freed before
  # the update: its dtype ('float32': the same tokens as the train params; 'bfloat16': half
  # the memory and bandwidth, tokens may differ) and its layout on the decode mesh (the same
  # devices as data x tensor, so no row is decoded twice): 'replicated' (whole model on every
  # device, each decodes its own rows), 'tensor' (heads, KV heads, MLP and vocabulary split over
  # opd.rollout_tensor devices, rows over the rest; no weight collective while decoding) or
  # 'train' (no copy: the FSDP-sharded train params, re-gathered at every decode step; float32).
  c.opd.rollout_dtype = "float32"  # 'float32' | 'bfloat16'
  c.opd.rollout_sharding = "replicated"  # 'replicated' | 'tensor' | 'train'
  c.opd.rollout_tensor = (
    0  # devices per tensor group for 'tensor'; 0 = as many as the KV heads allow
  )
  # Rollouts decode this many positions per program (segments of one while_loop; the tokens
  # drawn do not depend on it): between segments the host sees a stop request (SIGTERM) and
  # abandons the rollout, and a rollout ends after the segment in which every row has ended.
  # 0 = the whole rollout in one program (a stop then waits for it to finish).
  c.opd.decode_segment = 256

  c.rock = ml_collections.ConfigDict()
  # 'off' (track and select for metrics, no masking) | 'static' (ids from list_path, masked) |
  # 'dynamic' (the RockStats selection is masked)
  c.rock.mode = "off"
  c.rock.lam = 0.0  # weight of rock positions in the loss, in [0, 1] (paper Rock-Freeze: 0)
  c.rock.list_path = ""  # static mode: id list file (e.g. rockjax/resources/qwen3_paper_rocks.txt)
  c.rock.k = 100  # off/dynamic: number of rock ids (paper: 100)
  c.rock.min_freq = 2  # off/dynamic: ignore ids seen fewer times (authors' code: 2)
  # off/dynamic: drop the N most frequent first (authors' code: 5; the published list: 0)
  c.rock.exclude_top_freq = 5
  c.rock.selector = "rock_score"  # rock_score (Freq x mean KL) | frequency | mean_kl
  # Statistics window for selection: cumulative (all steps) | recent (decayed by rock.decay) |
  # since_snapshot (steps after rock.snapshot_step) | snapshot (frozen at that step)
  c.rock.window = "cumulative"
  c.rock.decay = 0.99  # per-step decay of the 'recent' window
  c.rock.warmup_steps = 10  # off/dynamic: first selection after this many steps
  c.rock.select_every = 10  # off/dynamic: reselect every N steps
  c.rock.snapshot_step = 0  # snapshot per-id mean KL after this step (persistence); 0 = never
  # (rock.warmup_steps, select_every, snapshot_step and decay count optimiser updates: steps x
  # opd.updates_per_rollout over a run; the statistics take each update's forward)

  c.opt = ml_collections.ConfigDict()
  c.opt.lr = 1e-3  # peak learning rate (paper OPD: 2e-6 on Qwen3-4B)
  c.opt.end_lr = 1e-5  # cosine floor (paper: 1e-8)
  # Linear warm-up share of the updates, c.steps x opd.updates_per_rollout (paper: 5%), then
  # cosine decay to end_lr. Update n (from 1) uses the curve at n: the first update already
  # moves (lr / warm-up updates), update round(warmup_frac * updates) is the first at the peak
  # and the last update ends at end_lr.
  c.opt.warmup_frac = 0.05
  c.opt.b1 = 0.9
  c.opt.b2 = 0.98  # paper: (0.9, 0.98)
  c.opt.eps = 1e-8
  c.opt.weight_decay = 0.0  # paper: 0
  c.opt.clip = 1.0  # global-norm clipping (paper: 1.0); 0 = off
  # Micro-batches per update: the jitted step splits the batch rows into this many groups
  # (rows i, i+k, ...) and scans over them, accumulating float32 gradients, so activation
  # memory shrinks k-fold while the loss stays the whole batch's token mean and each step is
  # still one update (the schedule counts updates). Must divide the batch rows
  # (data.prompts_per_step x opd.samples_per_prompt on-policy, data.prompts_per_step off-policy).
  c.opt.micro_batches = 1

  c.data = ml_collections.ConfigDict()
  c.data.task = "arithmetic"  # built-in synthetic task used when train_path is empty
  c.data.task_size = 2000  # synthetic problems generated into the workdir
  # single_digit (2-3 operands 1-9, +-) | easy (2-3, 1-20, +-) | medium (2-4, +-*) | hard
  c.data.task_difficulty = "medium"
  c.data.train_path = ""  # JSONL/Parquet with a prompt field (+ answer, + completion)
  c.data.eval_path = ""  # held-out prompts for pass@1 (synthetic split when empty)
  c.data.tokenizer_path = ""  # AutoTokenizer directory ('' = the teacher's, or the task's)
  c.data.prompt_field = "prompt"
  c.data.answer_field = "answer"
  c.data.completion_field = "solution"  # off-policy mode: the given completion
  c.data.use_chat_template = True  # format prompts with the tokenizer's chat template
  # System message placed before each user prompt ('' = none, as in the paper's runs as far as
  # known); needs a chat template. A record whose messages start with a system one keeps its own.
  c.data.system_prompt = ""
  # Passed to chat templates that have a thinking switch (Qwen3 hybrid); templates without one
  # (Qwen3-*-Instruct-2507, the paper's models) ignore False and refuse True.
  c.data.enable_thinking = False
  c.data.prompts_per_step = 8  # global prompts per step (x samples_per_prompt sequences)
  # Run length from passes over the data: > 0 sets steps = ceil(train prompts x epochs /
  # prompts_per_step) (fractions allowed: 0.25 = a quarter pass), overriding `steps`, before
  # the run starts (the lr schedule follows; the workdir's config.json records the result).
  # 0 = use `steps`. A budget cap that keeps this schedule: `stop_after`.
  c.data.epochs = 0.0
  # Train prompts for data.epochs when the file is not read (dry runs); a real run counts the
  # prompts of data.train_path it trains on (bad records skipped and over-long prompts dropped
  # do not count) and records that count here. 0 = unknown.
  c.data.num_train_prompts = 0
  c.data.max_prompt_len = 32  # prompt ids per row, left-padded to this (static shapes)
  # A formatted prompt longer than max_prompt_len: 'drop' (leave the record out, counted),
  # 'truncate' (keep its last max_prompt_len ids: cuts the start, counted) or 'error' (stop,
  # naming file:line). Counts: data/prompts_dropped, data/prompts_truncated in metrics.jsonl.
  c.data.prompt_overflow = "drop"
  # A bad record (invalid JSON, missing or non-string prompt): False = stop naming file:line,
  # True = skip it and count it (data/records_skipped).
  c.data.skip_bad_records = False
  c.data.max_len = 96  # off-policy: prompt + completion length
  # Off-policy only: pack several prompt + completion sequences into each max_len row
  # (first-fit, rockjax.data.packing); each keeps its own positions and attends only to itself.
  # prompts_per_step then counts packed rows. Needs opd.normalizer 'tokens' or 'weights'.
  c.data.pack = False
  # Right-pad every train batch (rollouts and off-policy rows) to a length that is a multiple
  # of this: padded columns are masked out (no change to loss, metrics or rock statistics) and
  # give shapes attention blocks and sequence shards divide. 1 = no padding (CPU runs).
  c.data.pad_to_multiple = 1

  c.mesh = ml_collections.ConfigDict()
  # data/fsdp/context/tensor are the sizes within one TPU slice or GPU node (fast links); each
  # axis spans dcn_<axis> slices/nodes on top (the slower data-centre network), so the full
  # axis is <axis> x dcn_<axis>. Slices are told apart by the devices' slice_index (TPU
  # multislice), else nodes by process (one process per node, e.g. GPU clusters under Slurm).
  c.mesh.data = 1  # pure data parallelism (replicated params)
  c.mesh.fsdp = -1  # -1: the rest of a slice's/node's devices; shards params, optimizer, batch
  # Sequence (context) parallelism: the train step's activations are split along the padded
  # length, K/V gathered inside attention. Use it when the batch rows per micro-batch cannot
  # fill data x fsdp (e.g. 4 rollouts on 8 chips); the padded length must divide by it.
  c.mesh.context = 1
  c.mesh.tensor = 1  # tensor parallelism: heads, MLP, vocab, experts
  c.mesh.dcn_data = 1  # slices/nodes along data: the usual multislice/multi-node choice
  c.mesh.dcn_fsdp = 1  # slices/nodes along fsdp (params gathered over DCN every step)
  c.mesh.dcn_context = 1  # slices/nodes along context (K/V gathered over DCN every layer)
  c.mesh.dcn_tensor = 1  # slices/nodes along tensor (rarely useful: per-layer traffic)
  c.mesh.num_devices = 0  # dry runs only: the declared device count (0 = the local devices)

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 25  # steps between orbax checkpoints (and one at the end); 0 = end only
  # Also save after a step when this many minutes have passed since the last save (or the
  # start); 0 = off. Process 0's clock decides for every host.
  c.ckpt.every_minutes = 0.0
  c.ckpt.keep = 3  # the latest checkpoints kept
  # Steps whose checkpoints are kept besides those, e.g. (500, 1000). An on-policy run also
  # saves and keeps analysis.early_step's checkpoint (the persistence study reads it).
  c.ckpt.keep_steps = ()
  # Write checkpoints in the background (orbax's async manager): the device-to-host copy
  # blocks, the file writes overlap the next steps; a save still in flight when the run ends is
  # finished first, and one cut off by a crash is never restored. False: every save blocks.
  c.ckpt.async_save = True
  c.ckpt.resume = ""  # a checkpoint directory to start from when the workdir has none
  # Write the main stage's trained student as a Hugging Face directory (safetensors, config,
  # generation config, tokenizer: what transformers, vLLM and lm-eval read) at WORKDIR/export_hf
  # when it completes (preliminary stages always export theirs). May change between runs in a
  # workdir: turned on after a completed run, the next run exports its last checkpoint without
  # training. Any checkpoint: python -m rockjax.export (docs/running.md, "Exporting").
  c.ckpt.export_hf = True

  # What a restart can reuse instead of redoing (docs/running.md, "What a restart costs").
  c.cache = ml_collections.ConfigDict()
  # Directory of orbax copies of the Hugging Face weights a run loads (model/teacher with
  # source 'hf'): made on the first start (or by python -m rockjax.convert) in the run's
  # param_dtype and layer layout, then restored straight into each device's shards by every
  # host; a fingerprint of the HF directory's files detects a stale copy (rebuilt, with one
  # line saying why). Use storage every host can read (gs://) on pods; '' = off: always read
  # the safetensors.
  c.cache.weights = ""
  # Persistent XLA compilation cache: compiled programs are read back on a restart instead of
  # compiled again. '' = the entry points' default (ROCKJAX_COMPILATION_CACHE, else
  # ~/.cache/rockjax/jax_compilation); a directory (local or gs://) sets it; 'off' turns it off.
  c.cache.compilation = ""

  # The stages around the main one (rockjax.runner.stages; docs/running.md, "Stages").
  c.pipeline = ml_collections.ConfigDict()
  # A finished workdir whose completed preliminary stages (teacher SFT, stage-1 KD) this run
  # takes instead of training them again, each one whose config matches this run's (fields
  # only the main stage reads, e.g. rock.*, may differ); '' = train every stage here. A stage
  # that differs is trained here, and the run prints which fields differ.
  c.pipeline.reuse = ""

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 25  # steps between pass@1 evaluations; 0 = off
  c.eval.num_prompts = 32  # held-out prompts per evaluation
  c.eval.num_samples = 1  # samples per prompt (pass@1 is averaged over them)
  c.eval.temperature = 0.6  # paper: 0.6
  c.eval.max_new_tokens = 48

  # Benchmark evaluation (python -m rockjax.evaluate; docs/evaluation.md): the paper's protocol
  # by default -- sampled pass@1 averaged over 5 samples per problem at temperature 0.6.
  c.bench = ml_collections.ConfigDict()
  # NAME=PATH,... of benchmark files in their published formats: aime24, aime25, hmmt25_feb,
  # math500, ifeval (the --benchmarks flag overrides it); '' = none configured
  c.bench.benchmarks = ""
  # 'paper': "Question: {problem}\nAnswer:" as plain text (the authors' template; IFEval's
  # prompt as it is) | 'chat': the problem as the user's message in the tokenizer's chat template
  # (data.system_prompt, data.enable_thinking apply) | any format string with {problem}
  c.bench.prompt_template = "paper"
  c.bench.num_samples = 5  # samples per problem; pass@1 is their mean accuracy (paper: 5)
  c.bench.temperature = 0.6  # paper: 0.6; 0 = greedy (one sample is then enough)
  c.bench.top_p = 1.0  # nucleus sampling; 1 = off (the paper states none)
  c.bench.max_new_tokens = 16384  # response length limit (the paper's max_gen_toks: 16,384)
  c.bench.max_prompt_len = 2048  # prompts are left-padded to their longest, at most this
  # Problems per decode call (x num_samples rows): the KV cache holds that many rows of
  # prompt + max_new_tokens positions (docs/evaluation.md, "Memory")
  c.bench.batch_size = 8
  # Sampling seed: benchmark k's batch b draws with fold_in(fold_in(key(seed), k), b), so the
  # seed and bench.batch_size fix every response (both are recorded in eval.json)
  c.bench.seed = 0
  c.bench.macro = "aime24,aime25,hmmt25_feb"  # the benchmarks the headline average is over

  # Pre-flight checks before step 1 of every stage (rockjax.runner.preflight; docs/running.md,
  # "Pre-flight checks"). Model/tokenizer files and tokenizer ids vs embedding rows are always
  # checked; these two checks can be turned off.
  c.preflight = ml_collections.ConfigDict()
  # Data tokenizer vs each model directory's own tokenizer (probe text + chat template ids),
  # and the teacher probe below; False skips both
  c.preflight.enabled = True
  # Teacher determinism: max |difference| (nats) of next-token log-probs and entropies allowed
  # between two teacher passes over one probe batch (data x fsdp rows of 64 tokens); 0 = skip
  c.preflight.determinism_tol = 1e-3

  # Rock analysis (python -m rockjax.analyze, and the pipeline's last stage): the student
  # decodes the evaluation set, the teacher scores it teacher-forced, rocks are selected with
  # the rock.* settings, and WORKDIR/analysis/ gets report.md, report.json, PNGs,
  # corpus.parquet and rock_ids.txt (docs/running.md, "Rock analysis").
  c.analysis = ml_collections.ConfigDict()
  c.analysis.enabled = True  # run the analysis as the pipeline's last stage
  c.analysis.num_prompts = 500  # evaluation prompts decoded (paper: 500); clipped to the set
  # Decode length (paper text: full length, 8000; the published list: 256); 0 = eval.max_new_tokens
  c.analysis.max_new_tokens = 0
  c.analysis.greedy = True  # greedy decoding (paper); False samples at analysis.temperature
  c.analysis.temperature = 0.6  # sampling temperature when greedy is False
  c.analysis.batch_size = 32  # prompts decoded and scored per batch (one Parquet row group)
  c.analysis.k_grid = "10,20,50,100,200"  # K values of the coverage and Jaccard curves
  # Sub-corpus sizes (sequences) of the Jaccard stability test; read as shares of the paper's
  # 500 problems and scaled when the corpus is smaller than the largest
  c.analysis.subcorpus_sizes = "50,100,200,300,400"
  c.analysis.subcorpus_repeats = 5  # random sub-corpora drawn per size
  c.analysis.seed = 0  # sub-corpus draws and (greedy=False) decoding
  c.analysis.num_random = 200  # geometry: random non-rock ids in the control group (paper: 200)
  c.analysis.control_seed = 0  # seed of the frequency-matched random control list
  # The id list the Random control is frequency-matched to (and disjoint from, as from the
  # analysis's rocks): the list Rock-Freeze freezes. '' = rock.list_path when rock.mode is
  # 'static' (the run's own frozen list), else this analysis's top rock.k
  c.analysis.control_match_list = ""
  # Knockout census candidates: 'rock_score' (the top knockout_candidates ids by Rock Score:
  # the paper's pool) | 'rocks_and_controls' (the matched list's ids, then as many controls)
  c.analysis.knockout_pool = "rock_score"
  c.analysis.knockout_candidates = 20  # ids banned one at a time in the census (paper: 200)
  # Census decode length (paper: 4096); 0 = the analysis's own (analysis.max_new_tokens)
  c.analysis.knockout_max_new_tokens = 0
  # Census prompts per decode call (rounded up to the mesh's row shards): the KV cache holds
  # this many rows of prompt + knockout_max_new_tokens positions (docs/evaluation.md, "Memory")
  c.analysis.knockout_batch_rows = 256
  c.analysis.knockout_eps = 0.01  # |delta accuracy| threshold of Pillar / Stumbling Block
  # Knockout significance (rockjax.evaluation.paired_bootstrap): 'bootstrap' (the paper's: a
  # two-sided paired bootstrap p-value over problems) | 'permutation' (paired permutation test)
  c.analysis.knockout_test = "bootstrap"
  c.analysis.bootstrap_resamples = 10000  # paired bootstrap resamples (paper: 10,000)
  c.analysis.alpha = 0.05  # significance level of the knockout and persistence tests
  # Persistence: the checkpoint (HF export or checkpoint dir) compared with the final one;
  # '' = WORKDIR/ckpt at analysis.early_step if set, else the HF checkpoint the main stage
  # started from (e.g. the stage-1 export), if any
  c.analysis.early_checkpoint = ""
  # > 0: the training step whose checkpoint persistence compares with the final one (on-policy
  # runs save and keep it, whatever ckpt.every and ckpt.keep); 0 = none
  c.analysis.early_step = 0
  c.lock()
  return c
