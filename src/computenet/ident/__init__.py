"""Identity: computing power identifiers (CPIs), keys, signatures."""
