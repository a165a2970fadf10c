"""Network definitions the registry can build."""
