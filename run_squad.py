# NVIDIA-compatible entry point; the code lives in bertforge/cli/squad.py.
from bertforge.cli.squad import main
from bertforge.distributed import run_as_process

if __name__ == "__main__":
    run_as_process(main)
