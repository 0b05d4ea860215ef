"""Bootloader fixers."""
