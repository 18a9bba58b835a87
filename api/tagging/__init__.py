"""Bulk tagging of merchandisers' photo folders: the engine shared by `seesku tag` and the jobs API."""
