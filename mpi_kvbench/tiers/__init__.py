"""Tier plug-ins: each stores fixed-size objects in numbered slots; see tiers/base.py."""
