"""A gs:// workdir end to end, against a fake bucket: no byte lands in a local `gs:` directory,
the outputs are in the bucket, and a resume continues the data stream where it stopped.

The fake bucket is a local directory behind the same two doors real gs:// paths take: fsspec's
'gcs' protocol (what etils.epath uses for gs://, gcsfs in production) and orbax's TensorStore
kvstore for gs:// (its 'gcs' driver in production, the 'file' driver here). No network.
"""

import importlib
import json
import os
import tempfile

import jax
import numpy as np
import pytest
from etils.epath import backend as epath_backend
from flax import nnx

from configs import tiny
from rockjax import checkpoint, errors, metrics, models
from rockjax.data.tasks import arithmetic
from rockjax.rocks import table as rock_table
from rockjax.runner import experiment, pipeline
from rockjax.runner import loop as train
from tests.fixtures import batches, build, one_device_mesh, position, random_model


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """Routes gs://NAME/... to tmp_path/store/NAME/...; cwd and TMPDIR move under tmp_path too,
  so a path written as a local file ('gs:/NAME/...') would show up there."""
  from fsspec.implementations.dirfs import DirFileSystem
  from fsspec.implementations.local import LocalFileSystem
  from orbax.checkpoint._src.path import gcs_utils

  store = tmp_path / "store"
  store.mkdir()

  class FakeGCS(DirFileSystem):
    protocol = ("gs", "gcs")
    cachable = False

    def __init__(self, *args, **kwargs):  # epath passes gcsfs options (finalize_on_close)
      super().__init__(path=str(store), fs=LocalFileSystem())

  def kvstore(path):  # TensorStore spec for a gs:// path: its local stand-in
    name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
    return {"driver": "file", "path": str(store / name / key)}

  registry = importlib.import_module("fsspec.registry")  # (`fsspec.registry` is a read-only view)
  for protocol in FakeGCS.protocol:  # registered for this test only
    monkeypatch.setitem(registry._registry, protocol, FakeGCS)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
  # Orbax asks the GCS API whether the bucket has a hierarchical namespace: it has not.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  for d in ("cwd", "tmp"):
    (tmp_path / d).mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  yield store
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  stray = [str(p) for p in tmp_path.rglob("*") if p.name.startswith("gs:")]
  assert not stray, f"gs:// paths written as local files: {stray}"
  assert os.listdir(tmp_path / "cwd") == [], "something was written to the working directory"


def cloud_run(**overrides):
  c = tiny.get_config()
  c.opd.mode = "off_policy"  # no sampling: the data stream is the whole input
  c.update_from_flattened_dict({"steps": 4, "ckpt.every": 2, "mesh.fsdp": 1, **overrides})
  return c


def record_batches(monkeypatch):
  """[host tokens of each step's batch], filled as train.run draws batches."""
  seen, real = [], train._next_batch

  def next_batch(exp, state, step, *rest):
    batch, made = real(exp, state, step, *rest)
    seen.append(np.asarray(jax.device_get(batch.tokens_BxL)))
    return batch, made

  monkeypatch.setattr(train, "_next_batch", next_batch)
  return seen


@pytest.mark.slow
def test_training_in_a_bucket_writes_there_and_resumes_the_data_stream(bucket, monkeypatch):
  seen = record_batches(monkeypatch)
  first = train.run(cloud_run(stop_after=2), "gs://bkt/run")
  assert first.step == 2 and not first.completed
  second = train.run(cloud_run(), "gs://bkt/run")
  assert second.experiment.start_step == 2

  # The uninterrupted stream: a fresh pipeline over the same (bucket) task files.
  c = cloud_run()
  paths = experiment.task_files(c, "gs://bkt/run")
  tokenizer = models.load_tokenizer(paths["tokenizer"])
  fresh, _, _ = experiment._pipelines(c, paths, tokenizer, second.experiment.mesh)
  stream = [next(fresh)["tokens_BxL"] for _ in range(4)]
  fresh.close()
  assert len(seen) == 4  # steps 0, 1, then (resumed) 2, 3
  for step, (got, want) in enumerate(zip(seen, stream)):
    np.testing.assert_array_equal(got, want, err_msg=f"batch of step {step}")
  assert second.data_state["next_batch"] == 4

  # Outputs in the bucket: metrics of both runs (appended across the resume), TensorBoard
  # events, the rock table, the synthetic task, and the checkpoints with the data position.
  run = bucket / "bkt" / "run"
  lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [1, 2, 3, 4]
  assert len(os.listdir(run / "tb")) == 2  # one event file per run
  table = json.loads((run / "rocks.json").read_text())
  assert table == json.loads(json.dumps(second.rock_table))
  assert (run / "task" / "train.jsonl").is_file()
  assert (run / "task" / "tokenizer" / "tokenizer.json").is_file()
  assert sorted(os.listdir(run / "ckpt")) == ["2", "4"]
  position = json.loads((run / "ckpt" / "2" / "data" / "process_0-of-1.json").read_text())
  assert position["next_batch"] == 2


def test_checkpoint_in_a_bucket_restores_the_data_position(bucket):
  _, state, _ = build(one_device_mesh(), rock_mode="off")
  ckpt = checkpoint.Checkpointer("gs://bkt/run/ckpt", keep=2)
  ckpt.save(1, state, batches(3))
  later = state.replace(step=state.step + 5)
  ckpt.save(2, later, batches(7))
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  resumed = batches(0)
  restored, _, step = ckpt.restore(like, data_iterator=resumed)
  ckpt.close()
  assert (step, int(restored.step)) == (2, 5)
  assert resumed.get_state() == position(7)
  assert sorted(os.listdir(bucket / "bkt" / "run" / "ckpt")) == ["1", "2"]


def test_metrics_and_rock_table_in_a_bucket_append_across_runs(bucket):
  run = bucket / "bkt" / "run"
  run.mkdir(parents=True)
  (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "opd/loss": 0.5}) + "\n")
  writer = metrics.MetricWriter("gs://bkt/run", upload_every_s=1e9)
  writer.write(2, {"opd/loss": 0.25, "opd/kl": float("nan")})
  assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # not uploaded yet
  writer.flush()
  writer.write(3, {"opd/loss": 0.125})
  writer.close()
  lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert lines == [
    {"step": 1, "opd/loss": 0.5},
    {"step": 2, "opd/loss": 0.25, "opd/kl": None},
    {"step": 3, "opd/loss": 0.125},
  ]
  assert [f.startswith("events.out.tfevents") for f in os.listdir(run / "tb")] == [True]
  assert rock_table.write_table("gs://bkt/run", {"rows": [1]}) == "gs://bkt/run/rocks.json"
  assert json.loads((run / "rocks.json").read_text()) == {"rows": [1]}


def test_hf_export_and_tokenizer_round_trip_through_a_bucket(bucket):
  cfg = models.ModelConfig.for_family(
    "qwen3",
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=8,
  )
  model = random_model(cfg, seed=3)
  models.save_pretrained(model, "gs://bkt/hf")
  assert sorted(os.listdir(bucket / "bkt" / "hf")) == ["config.json", "model.safetensors"]
  loaded = models.from_pretrained("gs://bkt/hf")
  want = jax.tree.leaves(nnx.state(model, nnx.Param))
  got = jax.tree.leaves(nnx.state(loaded, nnx.Param))
  assert len(got) == len(want)
  for x, y in zip(got, want):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  arithmetic.make_tokenizer("gs://bkt/tok")
  arithmetic.make_tokenizer(bucket.parent / "tok")
  text = "Compute 12 + 30. Hence the answer is 42."
  cloud, local = (models.load_tokenizer(p) for p in ("gs://bkt/tok", bucket.parent / "tok"))
  assert cloud.encode(text) == local.encode(text) and cloud.chat_template == local.chat_template


def test_an_s3_workdir_is_refused_before_anything_is_written():
  with pytest.raises(errors.WorkdirError, match=r"--workdir=s3://b/run: checkpoints .* gs://"):
    pipeline.run(tiny.get_config(), "s3://b/run")


@pytest.mark.slow
def test_pipeline_stages_export_and_complete_in_a_bucket(bucket):
  """Teacher SFT -> export (hf.tmp renamed to hf in the bucket) -> OPD loading that export;
  a re-run reads every stage.json from the bucket and trains nothing."""
  c = tiny.get_config()
  c.update_from_flattened_dict(
    {"teacher.source": "sft", "teacher.stage_steps": 2, "steps": 2, "mesh.fsdp": 1}
  )
  summary = pipeline.run(c, "gs://bkt/p")
  root = bucket / "bkt" / "p"
  assert summary["complete"] and [r["stage"] for r in summary["stages"]] == ["teacher_sft", "main"]
  assert sorted(os.listdir(root / "teacher_sft" / "hf")) == [
    "chat_template.jinja",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]
  assert not (root / "teacher_sft" / "hf.tmp").exists()
  for f in ("config.json", "summary.json", "stage.json", "teacher_sft/stage.json"):
    assert (root / f).is_file(), f
  again = pipeline.run(c, "gs://bkt/p")
  assert [r["seconds"] for r in again["stages"]] == [r["seconds"] for r in summary["stages"]]
