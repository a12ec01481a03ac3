"""Benchmarks: our epoch times against peers'."""
