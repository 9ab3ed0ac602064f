"""Floor 0: what every layer shares and nothing depends on: the registry, plug-ins, the turn tags, atomic file
writes and the settings (groups of dataclass fields, YAML loading). Importable without gymnasium, torch or any
env; nothing here imports another part of the package."""
