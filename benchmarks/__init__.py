"""rnnkit's benchmark scripts: ratios against the alternative, measured in the same run."""
