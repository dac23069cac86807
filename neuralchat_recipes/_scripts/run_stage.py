"""Entry script for launchers that need a file path (gaudi_spawn -> deepspeed / mpirun)."""

import sys

from neuralchat_recipes.worker import main

if __name__ == "__main__":
    sys.exit(main())
