"""The value model every stage shares: keys, steps, field values, metric columns, policies, limits."""
