"""Configs: validation (`check.py` with its tables in `fields.py` and batch/mesh rules in
`mesh.py`), the step's settings built from a config (`settings.py`) and run lengths
(`run_length.py`)."""
