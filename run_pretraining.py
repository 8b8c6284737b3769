# NVIDIA-compatible entry point; the code lives in bertforge/cli/pretrain.py.
from bertforge.cli.pretrain import main
from bertforge.distributed import run_as_process

run_as_process(main)
