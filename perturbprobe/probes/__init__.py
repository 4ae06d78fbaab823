"""Probes (logistic, LightGBM, the CCPS contrastive MLP/CNN), bundles and the production
Scorer. Not implemented yet: planned in the next issues (see ARCHITECTURE.md)."""
