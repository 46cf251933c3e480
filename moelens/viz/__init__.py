"""Visualisations: circuitsvis token views that work offline, rich notebook displays, and the
HTML helpers the report uses (one place escapes everything that comes from the user or the data).

>>> view = token_values(["The", " film"], [0.2, 0.9], title="demo")
>>> view.element
'ColoredTokens'
"""

from .html import Markup, el, escape
from .render import View, save_html, standalone_page
from .routing_map import RoutingMap, routing_map
from .tokens import expert_tokens, readable_tokens, routing_tokens, token_values, visible_token

__all__ = [
    "Markup",
    "RoutingMap",
    "View",
    "el",
    "escape",
    "expert_tokens",
    "readable_tokens",
    "routing_map",
    "routing_tokens",
    "save_html",
    "standalone_page",
    "token_values",
    "visible_token",
]
