"""Backends other than :class:`~moelens.HookedMoE`, and the protocol the analyses accept.

Importing this package imports no optional dependency: ``moelens.backends.nnsight`` needs the
``nnsight`` extra (``pip install "moelens[nnsight]"``) and is imported only when asked for.
"""
