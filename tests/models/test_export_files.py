"""What a HF export carries besides the weights (rockjax.runner.export.write_export and
rockjax.models.save_pretrained with a tokenizer): config.json's special ids, a
generation_config.json whose EOS ids are the tokenizer's EOS plus the chat template's end of
turn and whose decoding is the run's, the tokenizer with its chat template, and sharded
safetensors with their index, all as transformers reads them."""

import json

import numpy as np
import pytest
import transformers
from flax import nnx
from safetensors.numpy import load_file

import rockjax.models as rm
from configs import tiny
from rockjax.runner import export
from tests.fixtures import SAMPLER_CFG, random_model, word_tokenizer

CHATML = (
  "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + '<|im_end|>' }}"
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}"
)


def chatml_tokenizer():
  """A Qwen-like tokenizer: eos <|endoftext|>, end of turn <|im_end|>, pad <pad>, no bos."""
  words = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant"]
  words += [f"w{i}" for i in range(SAMPLER_CFG.vocab_size - len(words))]
  tok = word_tokenizer(
    {w: i for i, w in enumerate(words)},
    CHATML,
    eos_token="<|endoftext|>",
    pad_token="<pad>",
    unk_token="<unk>",
  )
  tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
  return tok


def end_of_turn_id(tok) -> int:
  """The id the chat template writes right after an assistant message, read off the template."""
  chat = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]
  text = tok.apply_chat_template(chat, tokenize=False)
  after = text[text.rindex("w2") + len("w2") :]
  return tok(after, add_special_tokens=False)["input_ids"][0]


def write(tmp_path, tok, temperature=0.6):
  c = tiny.get_config()
  c.eval.temperature = temperature
  graphdef, params = nnx.split(random_model(SAMPLER_CFG, seed=1))
  out = tmp_path / "hf"
  export.write_export(c, graphdef, params, tok, out)
  return out


def test_generation_config_ends_at_eos_and_the_chat_templates_end_of_turn(tmp_path):
  tok = chatml_tokenizer()
  end = end_of_turn_id(tok)
  assert end == tok.convert_tokens_to_ids("<|im_end|>") != tok.eos_token_id
  out = write(tmp_path, tok)
  gen = json.loads((out / "generation_config.json").read_text())
  assert gen["eos_token_id"] == [tok.eos_token_id, end]
  assert (gen["pad_token_id"], gen.get("bos_token_id")) == (tok.pad_token_id, None)
  # eval.temperature 0.6 over the whole vocabulary: top_k 0 turns transformers' 50 off.
  assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["top_k"]) == (True, 0.6, 1, 0)
  cfg = json.loads((out / "config.json").read_text())
  assert (cfg["eos_token_id"], cfg["pad_token_id"], cfg.get("bos_token_id")) == (
    tok.eos_token_id,
    tok.pad_token_id,
    None,
  )
  # As transformers reads them.
  loaded = transformers.GenerationConfig.from_pretrained(out)
  assert loaded.eos_token_id == [tok.eos_token_id, end]
  again = transformers.AutoTokenizer.from_pretrained(out)
  assert again.chat_template == tok.chat_template
  assert again.eos_token_id == tok.eos_token_id and end_of_turn_id(again) == end
  assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]  # no hf.tmp left


def test_greedy_runs_export_do_sample_false_and_one_eos(tmp_path):
  # The tiny task's template ends a turn with the eos itself: one id, an int as transformers
  # writes it; eval.temperature 0 (greedy) is do_sample false without a temperature.
  tok = word_tokenizer(
    {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"])},
    "{{ bos_token }}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}",
  )
  gen = json.loads((write(tmp_path, tok, temperature=0.0) / "generation_config.json").read_text())
  assert gen["eos_token_id"] == tok.eos_token_id == 2
  assert (gen["bos_token_id"], gen["pad_token_id"], gen["do_sample"]) == (1, 0, False)
  assert "temperature" not in gen and "top_k" not in gen


@pytest.mark.parametrize("shard", [20_000, None])
def test_sharded_export_writes_its_index_and_loads(tmp_path, shard):
  import torch

  tok = chatml_tokenizer()
  model = random_model(SAMPLER_CFG, seed=2)
  out = tmp_path / "hf"
  kw = {} if shard is None else {"max_shard_size": shard}
  rm.save_pretrained(model, out, tokenizer=tok, **kw)
  files = sorted(p.name for p in out.glob("*.safetensors"))
  tensors = {k: v for f in files for k, v in load_file(str(out / f)).items()}
  if shard is None:
    assert files == ["model.safetensors"] and not (out / "model.safetensors.index.json").exists()
  else:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
    assert sorted(index["weight_map"]) == sorted(tensors)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
  hf = transformers.AutoModelForCausalLM.from_pretrained(out)
  theirs = hf.state_dict()
  for key, value in tensors.items():
    np.testing.assert_array_equal(theirs[key].to(torch.float32).numpy(), value, err_msg=key)
  assert (out / "generation_config.json").is_file() and (out / "tokenizer.json").is_file()
