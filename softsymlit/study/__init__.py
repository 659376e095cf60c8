"""Orchestration of λ scans and teacher→student chains."""
