"""ptcli: pre-train neural networks on unlabeled data, fine-tune them on few labels."""

import time as _time

__version__ = "0.1.0"
PROCESS_START = _time.time()  # for run.json's `first_step_s`: start-up cost as users feel it
