"""Fine-tuning and evaluation pipelines (vision model, recommender). Needs `pip install .[train]`."""
