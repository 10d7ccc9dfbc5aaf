"""Trainers, one per model kind."""
