"""Working a ticket: who is involved, and what staff may do to it."""
