"""The zoo training script in pieces: ``data`` (examples, tokenizer, packing), ``loop`` (command
line, model, optimisation), ``metrics`` (held-out evaluation), ``card`` (the model card).
``python -m moelens.zoo.train`` is the entry point."""
