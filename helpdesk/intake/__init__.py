"""The intake pipeline: store raw, parse, classify, identify, route, thread, apply."""
