"""The promptr1 commands."""
