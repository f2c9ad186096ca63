"""Quality evaluation (`refine-eval`): the shapes benchmark with exact ground truth, and image folders."""
