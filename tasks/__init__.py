"""Command-line jobs (pretrain, classify, instruct, evaluate, generate) and their shared pieces."""
