"""Data the project trains and demonstrates on, all available offline."""
