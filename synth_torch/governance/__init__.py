"""Datasets as governed artifacts: quality gates, a registry, release notes and scenario suites."""
