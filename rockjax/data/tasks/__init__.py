"""Embedded tasks: the synthetic arithmetic task behind the CPU demo."""

from rockjax.data.tasks.arithmetic import make_problems, make_tokenizer, prepare_demo, write_jsonl

__all__ = ["make_problems", "make_tokenizer", "prepare_demo", "write_jsonl"]
