"""Eviction policies: a policy orders keys and nominates victims; see eviction/base.py."""
