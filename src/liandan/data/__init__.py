"""Data: find samples in each layout, read files, transform, load."""
