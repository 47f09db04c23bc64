"""VM backends behind a small Protocol. Imports nothing of ours (the leaf layer)."""
