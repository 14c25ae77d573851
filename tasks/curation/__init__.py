"""Data manager: curation rules over Arrow tables (issue 7)."""
