"""beaver_sim: a durable job queue you can crash at any byte, real and simulated."""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it, `beaver --version` prints it
