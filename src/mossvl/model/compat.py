"""What differs between the transformers releases we support: the name of the KV-cache argument and output field.

transformers 5.24 renamed ``past_key_values`` to ``cache`` in ``generate()``, in the models' forward arguments and in
the output dataclasses (the old argument name still works there with a deprecation warning; the old output field is
gone). The model accepts both argument names and fills whichever output field the installed release defines.
"""

from dataclasses import fields

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_FIELD = (
    "cache" if "cache" in {field.name for field in fields(CausalLMOutputWithPast)} else "past_key_values"
)


def cache_argument(cache, past_key_values):
    """The cache passed under either name (the new name wins when both are given)."""
    return cache if cache is not None else past_key_values
