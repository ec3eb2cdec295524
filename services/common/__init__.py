"""Plumbing every service shares: settings base, server lifecycle, error mapping."""
