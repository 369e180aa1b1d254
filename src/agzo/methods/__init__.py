"""The methods, one module each, registered by name (see `registry`).

Importing this package registers every built-in method; the rest of the library looks
methods up here (`get_method("agzo")`) instead of listing them.
"""

# isort: off
# Registration order is the order `agzo methods` and the CLI list them in.
from agzo.methods import agzo, mezo, lozo, zo_act, first_order  # noqa: F401

# isort: on
from agzo.methods.agzo import AGZO, AGZOOptions
from agzo.methods.lozo import LOZO, LOZOOptions
from agzo.methods.mezo import MeZO, MeZOOptions
from agzo.methods.registry import (
    BuildContext,
    Method,
    all_option_names,
    get_method,
    method_names,
    methods,
    register,
)

__all__ = [
    "AGZO",
    "LOZO",
    "AGZOOptions",
    "BuildContext",
    "LOZOOptions",
    "MeZO",
    "MeZOOptions",
    "Method",
    "all_option_names",
    "get_method",
    "method_names",
    "methods",
    "register",
]
