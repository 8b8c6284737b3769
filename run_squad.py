# NVIDIA-compatible entry point; the code lives in bertforge/cli/squad.py.
from bertforge.cli.squad import main

if __name__ == "__main__":
    main()
