"""Studies over trained models: codebook geometry, guidance sweeps, the attention paid to the condition prefix,
caption and class-embedding comparisons, and the pictures the apps and notebooks draw of them."""
