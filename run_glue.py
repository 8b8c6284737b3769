# NVIDIA-compatible entry point; the code lives in bertforge/cli/glue.py.
from bertforge.cli.glue import main

if __name__ == "__main__":
    main()
