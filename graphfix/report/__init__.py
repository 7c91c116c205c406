"""Renderings: text, JSON and SARIF output, the README rule reference, and known error messages."""
