"""SMTP server fixtures (filled in by the SMTP work)."""
