"""Entry point: `python -m rockjax.main --config=configs/demo.py --workdir=DIR`."""
import sys


def main() -> int:
  print("rockjax: the training job is not yet available in this version; "
        "the loss library (rockjax.losses) is. See README.md.", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
