"""Integrations with training frameworks that build the Trainer for the user (axolotl).

Nothing is imported here: each integration imports its framework only when it is used.
"""
