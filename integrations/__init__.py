"""Adapters that run PromptCollabEnv inside other training engines (TRL, verl)."""
