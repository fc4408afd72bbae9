"""Helpers and deliberately broken user code for the bad-input tests (no Ray, no training)."""
