"""The small core every layer may import: errors, device differences, checkpoint reading."""
