"""The reference model: the one mixin every algorithm with a reference shares, and its cached source.

    mixin.py  ReferenceMixin (the reference_policy and precompute_reference options; reference_logps(batch),
              reference_forward, sync_reference) and its Reference part (copy, model, adapter, none or cached)
    cache.py  ReferenceCache: the reference's log-probs computed once before training, cached on disk by a fingerprint
"""
