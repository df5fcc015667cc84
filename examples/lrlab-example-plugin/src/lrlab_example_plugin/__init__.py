"""An example lrlab plugin: the tiny-transformer model and the motifs dataset (see pyproject.toml's entry points)."""
