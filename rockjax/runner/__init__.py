"""Running: the stages of a run (`pipeline.run(config, workdir)`), one stage's host loop
(`loop.py`), how a run is built from a config (`experiment.py`), the checks before step 1
(`preflight.py`) and the end-of-run summary (`summary.py`)."""
