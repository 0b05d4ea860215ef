"""Repairs that run the guest's own tools."""
