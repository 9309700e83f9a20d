"""The benchmark harness (``make bench``, issue #8): scenarios, references and ratios."""
