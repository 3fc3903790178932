"""Adapter implementations; importing this package registers every (method, impl)."""
from . import full, lora, randlora_compiled, randlora_eager, randlora_semi, randlora_sparse  # noqa: F401
