"""Ray job entrypoints: ``python -m jobs.<name> --help``."""

import os
from pathlib import Path

# Ray Data's INFO lines (every execution plan) go to the session's log file, not the console
# (configs/ray_data_logging.yaml); set before any job imports ray.data. A user's own setting wins.
os.environ.setdefault("RAY_DATA_LOGGING_CONFIG",
                      str(Path(__file__).resolve().parents[1] / "configs" / "ray_data_logging.yaml"))
# Ray's own deprecation notices (Ray Data's DatasetManager, pydantic in Serve), printed by every
# worker process of every Train run, tell a user of the jobs nothing they can act on; workers
# inherit this from the local Ray the job starts. A user's own PYTHONWARNINGS wins.
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
