"""A plugin whose import fails."""
raise ImportError("cnnkit_broken_import needs a library that is not installed")
