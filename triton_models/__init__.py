"""The Triton model repository: exported graphs with their manifests and config.pbtxt files."""
