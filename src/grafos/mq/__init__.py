"""The bus: topics, producers, consumers, groups, dead letters and offsets."""
