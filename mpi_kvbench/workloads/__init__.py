"""Request sources (synthetic users, trace readers); see workloads/base.py."""
