"""Thin stages: read files -> call the pure core -> write files atomically."""
