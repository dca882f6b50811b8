"""The README's Python examples run as written (those that read no file)."""

import os
import re
import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _blocks():
    if not os.path.exists(README):
        return []
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.skipif(not _blocks(), reason="README.md is not beside tests/")
def test_readme_python_examples_run(capsys):
    blocks = [b for b in _blocks() if "open(" not in b]
    assert len(blocks) >= 3
    namespace = {}
    with warnings.catch_warnings():
        # the examples cap their epochs
        warnings.simplefilter("ignore", ConvergenceWarning)
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    # the printed R² of the first example, and the forecaster's outputs
    assert namespace["reg"].score(namespace["X"], namespace["y"]) > 0.9
    assert namespace["fc"].predict(12).shape == (12,)
    assert namespace["text_clf"].predict(["good film"])[0] == 1
