"""genrec's training entry point: ``python train.py fit|validate|test|predict --config configs/....yaml``.

Models and data modules are named in the config by ``class_path`` (Lightning CLI subclass mode); see ``configs/``.
"""

import sys

from genrec.cli import entry

if __name__ == "__main__":
    sys.exit(entry())
