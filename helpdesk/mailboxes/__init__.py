"""Mailbox adapters: IMAP, POP3 and the LMTP listener. IO lives here, decisions in ``intake``."""
