"""The model the course rebuilds, built in notebooks 01-08: data, hybrid tokenizer, text encoder, blocks,
next-scale transformer, residual diffusion head, the assembled HART, its sampling variants, the baseline.

Reading order: data, tokenizer, blocks, text, transformer, diffusion, hart, sampling_variants, baselines.
"""
