"""Shared test fixtures."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def run_elsewhere():
    """Run Python code in a fresh interpreter, from another folder, importing
    the sklearn_rnn under test: run from the repository root, ``python -c``
    would import the uncompiled source folder instead."""
    import sklearn_rnn

    root = os.path.dirname(os.path.dirname(os.path.abspath(sklearn_rnn.__file__)))

    def run(code, folder):
        env = dict(os.environ, PYTHONPATH=root)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=folder, env=env)

    return run
