"""The zoo training script in pieces: ``data`` (examples, tokenizer, packing), ``loop`` (command
line, model, optimisation), ``metrics`` (held-out evaluation), ``card`` (the model card).
``python -m zoo_training.train`` (from a clone of the repository) is the entry point."""
