"""Plugins that the tests install (an entry point in a dist-info directory on the path)."""
