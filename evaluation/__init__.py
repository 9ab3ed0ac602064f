"""The evaluation wing (being assembled)."""
