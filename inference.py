# NVIDIA-compatible entry point; the code lives in bertforge/cli/inference.py.
from bertforge.cli.inference import main

if __name__ == "__main__":
    main()
